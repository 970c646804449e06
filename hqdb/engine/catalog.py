"""The hqdb catalog (``hqdb_tables``) and the names of every table's shadow tables.

Every identifier hqdb formats into SQL goes through :func:`quote_ident`.
"""

from __future__ import annotations


def quote_ident(name: str) -> str:
    """``name`` as an SQL identifier in double quotes (embedded quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'
