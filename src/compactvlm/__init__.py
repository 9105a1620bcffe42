"""compactvlm: LLaVA-style VLMs with compressed vision tokens."""

__version__ = "0.1.0"
