"""User-facing errors: the CLI prints them as one line and exits non-zero (no traceback)."""


class BridgeOCRError(Exception):
    """A mistake in the user's input (file, config, flag). Message is one line and names the place."""


class DataError(BridgeOCRError):
    """A problem with one data file or one sample; `where` is 'path' or 'path:line'."""

    def __init__(self, where: str, message: str):
        self.where = str(where)
        self.message = message
        super().__init__(f"{self.where}: {message}")


class ConfigError(BridgeOCRError):
    """A bad config file, key or value."""
