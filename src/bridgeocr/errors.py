"""User-facing errors: the CLI prints them as one line and exits non-zero (no traceback)."""


class BridgeOCRError(Exception):
    """A mistake in the user's input (file, config, flag). Message is one line and names the place."""

    exit_code = 2  # what the CLI exits with


class DataError(BridgeOCRError):
    """A problem with one data file or one sample; `where` is 'path' or 'path:line'."""

    def __init__(self, where: str, message: str):
        self.where = str(where)
        self.message = message
        super().__init__(f"{self.where}: {message}")


class ConfigError(BridgeOCRError):
    """A bad config file, key or value."""


class NoUsableDataError(DataError):
    """A data set of which nothing could be used (every image unreadable, every row bad, or more dropped
    than `--max-skipped` allows): a result from it would be CER 0 or NaN, so there is none."""

    exit_code = 1
