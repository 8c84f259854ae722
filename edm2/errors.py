"""The package's own exception types. The CLI turns any of them into a one-line error."""


class EDM2Error(Exception):
    """Bad input or state that the user can fix; the message names the input and the fix."""


class DataError(EDM2Error):
    """A dataset, image or label file that cannot be used."""


class ConfigError(EDM2Error):
    """Options that contradict each other or the data."""


class FormatError(EDM2Error):
    """A file that is not in a format we can read (or not safely)."""


class DownloadError(EDM2Error):
    """A URL that could not be fetched (offline, not found, ...)."""


class OutputError(EDM2Error):
    """An output that cannot be written (read-only, not a folder, disk full, ...)."""
