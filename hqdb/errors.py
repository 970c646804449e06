"""Every exception hqdb raises, under one root.

``except hqdb.HqdbError`` catches all of them. The ones raised inside SQL statements also
subclass the matching apsw error, so code written against apsw keeps working:

================================  ==========================  ===============================
class                             also an                     raised when
================================  ==========================  ===============================
:class:`HqError`                  ``apsw.SQLError``           an hq table operation is given
                                                              bad input (shown by SQLite as the
                                                              statement's error)
:class:`OptionError`              ``HqError``, ``ValueError``  a CREATE VIRTUAL TABLE option or
                                                              a stored table option is invalid
:class:`ConstraintError`          ``apsw.ConstraintError``    a rowid or key is already taken
:class:`CorruptTableError`        ``apsw.CorruptError``       shadow tables disagree with the
                                                              catalog or with each other
:class:`StaleTableError`          ``HqError``                 a table was dropped or recreated
                                                              by another connection
:class:`SchemaError`              ``HqdbError``               the catalog version is unusable
:class:`ModelError`               ``ValueError``              a stored model is missing or bad
:class:`TrainingError`            ``ValueError``              training could not produce a model
:class:`CollectionError`          ``ValueError``              a collection call is malformed
:class:`NotFoundError`            ``CollectionError``,        a collection row does not exist
                                  ``KeyError``
:class:`RebuildError`             ``ValueError``              ``rebuild_table`` cannot proceed
================================  ==========================  ===============================
"""

from __future__ import annotations

import apsw

__all__ = [
    "HqdbError",
    "HqError",
    "OptionError",
    "ConstraintError",
    "CorruptTableError",
    "StaleTableError",
    "SchemaError",
    "ModelError",
    "TrainingError",
    "CollectionError",
    "NotFoundError",
    "RebuildError",
]


class HqdbError(Exception):
    """Base class of every error hqdb raises."""


class HqError(HqdbError, apsw.SQLError):
    """A user error inside an hq table operation (shown by SQLite as the statement's error)."""


class OptionError(HqError, ValueError):
    """A CREATE VIRTUAL TABLE argument (or an option stored in the catalog) is unknown,
    malformed or out of range."""


class ConstraintError(HqdbError, apsw.ConstraintError):
    """An insert or update would give two rows the same rowid or key."""


class CorruptTableError(HqdbError, apsw.CorruptError):
    """An hq table's shadow tables disagree with its catalog entry or with each other."""


class StaleTableError(HqError):
    """The table this object was opened on was dropped or recreated by another connection."""


class SchemaError(HqdbError):
    """The database's hqdb schema version cannot be used by this hqdb."""


class ModelError(HqdbError, ValueError):
    """A stored model is missing, malformed or does not fit the table."""


class TrainingError(HqdbError, ValueError):
    """Training could not produce a usable model (e.g. the loss stopped being finite)."""


class CollectionError(HqdbError, ValueError):
    """A collection call is malformed (unknown column, wrong type, missing modality...)."""


class NotFoundError(CollectionError, KeyError):
    """No row with that rowid or key."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class RebuildError(HqdbError, ValueError):
    """``rebuild_table`` cannot rebuild the table (e.g. rows whose codes are lost)."""


# Opening and locking a database file. Each also subclasses the apsw error SQLite reported, so
# ``except apsw.BusyError`` keeps working; the message names the file and what to do.
class DatabaseError(HqdbError):
    """A database file cannot be opened, read or written as asked (see the subclasses)."""


class DatabaseOpenError(DatabaseError, apsw.CantOpenError):
    """The database file cannot be opened (missing directory, no permission, not a file)."""


class DatabaseBusyError(DatabaseError, apsw.BusyError):
    """Another connection held a lock on the database longer than the busy timeout."""


class DatabaseReadOnlyError(DatabaseError, apsw.ReadOnlyError):
    """The database (or its directory) cannot be written, and the operation needs to write."""


__all__ += ["DatabaseError", "DatabaseOpenError", "DatabaseBusyError", "DatabaseReadOnlyError"]
