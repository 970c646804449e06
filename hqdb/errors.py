"""Exceptions hqdb raises in Python. Inside SQL they surface as apsw.SQLError with the same text."""


class HqdbError(Exception):
    """Base class of hqdb's own errors."""


class SchemaError(HqdbError):
    """The database's hqdb schema version cannot be used by this hqdb."""
