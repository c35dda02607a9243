"""Errors that name the problem and how to fix it.

Every error a user can cause by pointing selfsup at the wrong thing derives from ``SelfsupError``,
so the CLI can print it as one clear line instead of a traceback.
"""


class SelfsupError(Exception):
    """Base class for errors caused by input, configuration or environment, not by a bug."""


class DataError(SelfsupError):
    """A data source is missing, empty, corrupt or inconsistent."""


class ConfigError(SelfsupError):
    """A configuration key or value is unknown or invalid."""


class TrainingDiverged(SelfsupError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
