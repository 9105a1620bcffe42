"""Moved to ``compactvlm.model.image_tokens`` (the model's own input convention); kept as an alias."""

from ..model.image_tokens import accept_image_token, to_compact_ids  # noqa: F401
