"""One error type for everything a user can get wrong.

Every message says what is wrong and what to do about it; the CLI prints it without a traceback.
"""


class CompactVLMError(ValueError):
    """A user-facing error: bad input, bad config, missing file or checkpoint."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem}\n  -> {fix}")
