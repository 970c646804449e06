"""Exceptions hqdb raises in Python. Inside SQL they surface as apsw.SQLError with the same text."""


class HqdbError(Exception):
    """Base class of hqdb's own errors."""


class SchemaError(HqdbError):
    """The database's hqdb schema version cannot be used by this hqdb."""


class TrainingError(HqdbError, ValueError):
    """Training could not produce a usable model (e.g. the loss stopped being finite)."""
