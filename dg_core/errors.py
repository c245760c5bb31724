"""The one exception type users see.

A `DGError` carries a single line that names what was wrong and what was expected; the CLI prints it
without a traceback and exits non-zero. Anything else escaping a stage is a bug.
"""


class DGError(Exception):
    """A failure caused by input (config, data, credentials, files), reported as one clear line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
