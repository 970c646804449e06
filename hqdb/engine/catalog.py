"""The hqdb catalog and the names of every hq table's shadow tables.

The catalog is one table per database schema, ``hqdb_tables``: a row per hq table with its
shape (``dim``, ``books``, ``codewords``, ``chunk_size``), its other options as JSON, its
codebooks (raw tables) and its ``generation``, a random 63-bit value rewritten by every change
to the table's rows or codebooks (see :mod:`hqdb.engine.storage` for how caches use it).

Every query on ``hqdb_tables`` lives in this module, and table names are compared the way SQLite
compares them (case-insensitively, ``COLLATE NOCASE``). Every identifier hqdb formats into SQL
goes through :func:`quote_ident`; the shadow tables of table ``t`` are named only here:

``t_rows``               one row per item: rowid, where its codes live, the user's metadata
``t_chunks``             raw tables: codes ``chunk_size`` rows to a BLOB
``t_<modality>_chunks``  model-bound tables: one chunks table per modality
``t_pending``            tables created before schema version 3 (no longer written; dropped
                         with the table)
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

import apsw

from ..errors import CorruptTableError
from .options import CodeSet, TableOptions

TABLE = "hqdb_tables"


def scalar(conn: apsw.Connection, sql: str, params: tuple = ()) -> Any:
    """The single value of a query that always returns one row (count(*), max(...), ...)."""
    row = conn.execute(sql, params).fetchone()
    assert row is not None, sql
    return row[0]


def quote_ident(name: str) -> str:
    """``name`` as an SQL identifier in double quotes (embedded quotes doubled)."""
    return '"' + str(name).replace('"', '""') + '"'


def quote_string(value: str) -> str:
    """``value`` as an SQL string literal in single quotes (embedded quotes doubled)."""
    return "'" + str(value).replace("'", "''") + "'"


def qualified(schema: str, name: str) -> str:
    """``"schema"."name"``."""
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def _catalog(schema: str) -> str:
    return qualified(schema, TABLE)


def exists(conn: apsw.Connection, schema: str = "main") -> bool:
    """Whether the schema has hqdb's catalog: another application's file has none until its
    first hq table is created (the readers below then see no tables)."""
    return bool(
        conn.execute(
            f"SELECT 1 FROM {quote_ident(schema)}.sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
        ).fetchone()
    )


# ------------------------------------------------------------------------------ shadow names
def rows_name(table: str) -> str:
    return table + "_rows"


def chunks_name(table: str, cset: CodeSet) -> str:
    return table + cset.chunks_suffix


LEGACY_PENDING = "_pending"
VECTORS = "_vectors"  # rerank tables: each row's vector, chunked like its codes


def shadow_suffixes(opts: TableOptions) -> list[str]:
    """Suffixes of every shadow table a table with these options may own."""
    suffixes = ["_rows"] + [c.chunks_suffix for c in opts.code_sets]
    return suffixes + ([VECTORS] if opts.rerank else []) + ([LEGACY_PENDING] if opts.model else [])


def is_shadow_suffix(suffix: str) -> bool:
    """xShadowName: whether ``<table>_<suffix>`` may be one of our shadow tables."""
    return suffix in ("rows", "pending", "vectors") or suffix.endswith("chunks")


# ------------------------------------------------------------------------------ entries
@dataclass(frozen=True)
class Entry:
    """A catalog row: the table's name as stored, its options and its current generation."""

    name: str
    opts: TableOptions
    generation: int


def new_generation() -> int:
    return secrets.randbits(63)


def _entry(row, schema: str) -> Entry:
    """A catalog row as an :class:`Entry`, every field checked first (the file may come from
    anyone): :class:`CorruptTableError` naming the table and the field otherwise."""
    name, dim, books, codewords, chunk_size, options, generation = row
    where = f"{schema}.{TABLE}"
    if isinstance(name, bytes):  # read as BLOB: TEXT that is not UTF-8 is reported, not a crash
        try:
            name = name.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptTableError(f"an hq table's name in {where} is not UTF-8 text: {name[:60]!r}") from None
    if not isinstance(name, str) or not name or "\x00" in name:
        raise CorruptTableError(f"an hq table's name in {where} is not a table name: {name!r:.60}")
    opts = TableOptions.from_catalog(dim, books, codewords, chunk_size, options, table=name, where=where)
    if not isinstance(generation, int):  # hqdb always writes one (a random 63-bit integer)
        raise CorruptTableError(
            f"hq table {name!r}: its entry in {where} is invalid: field 'generation' is not an integer"
        )
    return Entry(name, opts, generation)


# name and options as BLOBs, decoded (and refused if not UTF-8) by _entry, not by the driver; a
# shape column holding TEXT (perhaps not UTF-8) comes as a BLOB too, refused as not an integer.
_ENTRY_COLS = (
    "CAST(name AS BLOB), "
    + ", ".join(
        f"CASE WHEN typeof({c}) = 'text' THEN CAST({c} AS BLOB) ELSE {c} END"
        for c in ("dim", "books", "codewords", "chunk_size")
    )
    + ", CAST(options AS BLOB), CASE WHEN typeof(generation) = 'integer' THEN generation END"
)


def read_entry(conn: apsw.Connection, schema: str, name: str) -> Entry | None:
    if not exists(conn, schema):
        return None
    row = conn.execute(
        f"SELECT {_ENTRY_COLS} FROM {_catalog(schema)} WHERE name = ? COLLATE NOCASE", (name,)
    ).fetchone()
    return None if row is None else _entry(row, schema)


def list_names(conn: apsw.Connection, schema: str = "main") -> list[str]:
    if not exists(conn, schema):
        return []
    # As BLOBs: a name that is not UTF-8 (a hostile file) is listed with U+FFFD, not a decode error.
    return [
        bytes(r[0]).decode("utf-8", "replace") if r[0] is not None else ""
        for r in conn.execute(f"SELECT CAST(name AS BLOB) FROM {_catalog(schema)} ORDER BY name")
    ]


def list_entries(conn: apsw.Connection, schema: str = "main") -> list[Entry]:
    if not exists(conn, schema):
        return []
    return [_entry(r, schema) for r in conn.execute(f"SELECT {_ENTRY_COLS} FROM {_catalog(schema)} ORDER BY name")]


def tables_using_model(conn: apsw.Connection, model: str, schema: str = "main") -> list[str]:
    """Names of the hq tables bound to stored model ``model``."""
    if not exists(conn, schema):
        return []
    return [
        r[0]
        for r in conn.execute(
            f"SELECT name FROM {_catalog(schema)} WHERE json_extract(options, '$.model') = ? ORDER BY name", (model,)
        )
    ]


def insert_entry(conn: apsw.Connection, schema: str, name: str, opts: TableOptions) -> int:
    generation = new_generation()
    conn.execute(
        f"INSERT INTO {_catalog(schema)}(name, dim, books, codewords, chunk_size, options, generation) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (name, opts.dim, opts.books, opts.codewords, opts.chunk_size, opts.to_json(), generation),
    )
    return generation


def delete_entry(conn: apsw.Connection, schema: str, name: str) -> None:
    conn.execute(f"DELETE FROM {_catalog(schema)} WHERE name = ? COLLATE NOCASE", (name,))


def rename_entry(conn: apsw.Connection, schema: str, old: str, new: str) -> None:
    conn.execute(f"UPDATE {_catalog(schema)} SET name = ? WHERE name = ? COLLATE NOCASE", (new, old))


def read_generation(conn: apsw.Connection, schema: str, name: str) -> tuple[Any, ...] | None:
    """(generation, dim, books, codewords, chunk_size, options) of a table, in one query: the
    caller tells a changed generation from a table that was dropped and recreated."""
    return conn.execute(
        f"SELECT generation, dim, books, codewords, chunk_size, options FROM {_catalog(schema)} "
        "WHERE name = ? COLLATE NOCASE",
        (name,),
    ).fetchone()


def write_generation(conn: apsw.Connection, schema: str, name: str) -> int:
    """Record a change to the table: a new random generation, returned."""
    generation = new_generation()
    conn.execute(f"UPDATE {_catalog(schema)} SET generation = ? WHERE name = ? COLLATE NOCASE", (generation, name))
    return generation


def read_codebooks(conn: apsw.Connection, schema: str, name: str):
    # TEXT (perhaps not UTF-8) is not decoded: the caller sees a str and refuses it as not a BLOB.
    row = conn.execute(
        f"SELECT CASE WHEN typeof(codebooks) = 'text' THEN 'TEXT' ELSE codebooks END FROM {_catalog(schema)} "
        "WHERE name = ? COLLATE NOCASE",
        (name,),
    ).fetchone()
    return None if row is None else row[0]


def write_codebooks(conn: apsw.Connection, schema: str, name: str, blob: bytes) -> int:
    generation = new_generation()
    conn.execute(
        f"UPDATE {_catalog(schema)} SET codebooks = ?, generation = ? WHERE name = ? COLLATE NOCASE",
        (blob, generation, name),
    )
    return generation


def model_of_tables(conn: apsw.Connection, schema: str = "main") -> dict[str, str | None]:
    """Every hq table's name -> the model it is bound to (None for raw tables)."""
    out: dict[str, str | None] = {}
    if not exists(conn, schema):
        return out
    for name, options in conn.execute(f"SELECT name, options FROM {_catalog(schema)} ORDER BY name"):
        try:
            model = json.loads(options).get("model")
        except (TypeError, ValueError, AttributeError, RecursionError):
            model = None
        out[name] = model if isinstance(model, str) else None
    return out


def table_stats(conn: apsw.Connection, schema: str = "main") -> list[dict]:
    """One entry per hq table: kind, model, modalities, columns, rows, shape, code bytes per
    item and modality, and the bytes its shadow tables take in the file (``dbstat``)."""
    out = []
    for e in list_entries(conn, schema):
        o = e.opts
        shadows = [rows_name(e.name)] + [chunks_name(e.name, c) for c in o.code_sets]
        rows = scalar(conn, f"SELECT count(*) FROM {qualified(schema, rows_name(e.name))}")
        disk = scalar(
            conn,
            "SELECT coalesce(sum(pgsize), 0) FROM dbstat(?) WHERE name IN (SELECT value FROM json_each(?))",
            (schema, json.dumps(shadows)),
        )
        out.append(
            {
                "table": e.name,
                "kind": "collection" if o.model else "raw",
                "model": o.model,
                "modalities": list(o.modalities) or ["code"],
                "columns": [c.name for c in o.columns],
                "rows": rows,
                "bits": o.dim,
                "books": o.books,
                "codewords": o.codewords,
                "code_bytes_per_item": o.code_bytes + o.qcode_bytes,
                "disk_bytes": disk,
                "disk_bytes_per_row": round(disk / rows, 1) if rows else None,
            }
        )
    return out
