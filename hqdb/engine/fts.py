"""Keyword index of an hq table: an FTS5 table over some of its TEXT columns, kept in sync by
triggers on the table's rows table.

The index of table ``t`` is the FTS5 table ``t_fts`` (``content=''``, ``contentless_delete=1``:
it stores the tokens, not a second copy of the text) and three triggers on ``t_rows``
(``t_fts_ai``, ``t_fts_ad``, ``t_fts_au``). Every write to an hq table puts the row's columns
into ``t_rows`` at once (SQL ``INSERT``/``UPDATE``/``DELETE``, ``hqdb.insert_items`` /
``insert_codes`` / ``insert_vectors`` / ``delete_rows``, collections), so the triggers see every
change, inside the writer's own transaction: a rollback (of a transaction or a savepoint) undoes
the index with the rows. ``DROP TABLE t`` drops the index; ``ALTER TABLE t RENAME TO u`` renames
it to ``u_fts`` (:meth:`hqdb.engine.table.Table.destroy` / ``rename`` call :func:`drop` /
:func:`rename`).

User text never reaches ``MATCH`` as FTS5 syntax: :func:`match_query` keeps only its words and
quotes each one as an FTS5 string, so ``"a" OR`` or ``NEAR(`` are searched as the words they
contain.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import apsw

from ..errors import HqError
from .catalog import qualified, quote_ident, quote_string, rows_name

SUFFIX = "_fts"
TRIGGERS = ("_fts_ai", "_fts_ad", "_fts_au")
# tokenize= values accepted: FTS5's built-in tokenizers and their plain options.
_TOKENIZE = re.compile(r"[A-Za-z0-9_ ]{1,100}\Z")
# What a query keeps of the user's text: runs of letters, digits (any script) and underscores,
# the characters FTS5's unicode61 tokenizer keeps too.
_WORD = re.compile(r"\w+")
MAX_TERMS = 64  # words of one keyword query (more are dropped: bm25 over 64 terms is plenty)


def fts_name(table: str) -> str:
    return table + SUFFIX


def _trigger_names(table: str) -> list[str]:
    return [table + s for s in TRIGGERS]


def columns(conn: apsw.Connection, schema: str, table: str) -> list[str] | None:
    """The columns of ``table`` its keyword index covers, or None without an index (an FTS5
    table ``<table>_fts`` with the index's insert trigger on ``<table>_rows``)."""
    master = f"{quote_ident(schema)}.sqlite_master"
    trig = conn.execute(
        f"SELECT 1 FROM {master} WHERE type = 'trigger' AND name = ? COLLATE NOCASE AND tbl_name = ? COLLATE NOCASE",
        (table + TRIGGERS[0], rows_name(table)),
    ).fetchone()
    if trig is None:
        return None
    row = conn.execute(
        f"SELECT sql FROM {master} WHERE type = 'table' AND name = ? COLLATE NOCASE", (fts_name(table),)
    ).fetchone()
    if row is None or "fts5" not in str(row[0]).lower():
        return None
    return [r[1] for r in conn.execute(f"PRAGMA {quote_ident(schema)}.table_info({quote_ident(fts_name(table))})")]


def _trigger_sql(schema: str, table: str, cols: Sequence[str]) -> str:
    fts = quote_ident(fts_name(table))
    rows = qualified(schema, rows_name(table))
    names = ", ".join(map(quote_ident, cols))
    new = ", ".join(f"new.{quote_ident(c)}" for c in cols)
    changed = " OR ".join(
        ["old.rowid IS NOT new.rowid"] + [f"old.{quote_ident(c)} IS NOT new.{quote_ident(c)}" for c in cols]
    )
    ai, ad, au = (qualified(schema, n) for n in _trigger_names(table))
    insert = f"INSERT INTO {fts}(rowid, {names}) VALUES (new.rowid, {new});"
    delete = f"DELETE FROM {fts} WHERE rowid = old.rowid;"
    return (
        f"CREATE TRIGGER {ai} AFTER INSERT ON {rows} BEGIN {insert} END;"
        f"CREATE TRIGGER {ad} AFTER DELETE ON {rows} BEGIN {delete} END;"
        # Only a change of the rowid or of an indexed column touches the index (a rebuild moves
        # every row's codes, and rewrites its rows-table entry, without changing its text).
        f"CREATE TRIGGER {au} AFTER UPDATE ON {rows} WHEN {changed} BEGIN {delete} {insert} END;"
    )


def create(conn: apsw.Connection, schema: str, table: str, cols: Sequence[str], tokenize: str = "unicode61") -> None:
    """Create the keyword index of ``table`` over ``cols`` (TEXT columns, checked by the caller)
    and fill it from the rows already there. The caller holds a write transaction."""
    if not isinstance(tokenize, str) or not _TOKENIZE.fullmatch(tokenize):
        raise HqError(
            f"{table}: tokenize must name an FTS5 tokenizer and its options, e.g. 'unicode61' or "
            f"'porter unicode61', got {tokenize!r}"
        )
    master = f"{quote_ident(schema)}.sqlite_master"
    taken = [
        r[0]
        for r in conn.execute(
            f"SELECT name FROM {master} WHERE name = ? COLLATE NOCASE OR name IN ({', '.join('?' * len(TRIGGERS))})",
            (fts_name(table), *_trigger_names(table)),
        )
    ]
    if taken:
        raise HqError(f"{table}: cannot create its keyword index: {', '.join(taken)} already exist(s)")
    fts = qualified(schema, fts_name(table))
    names = ", ".join(map(quote_ident, cols))
    conn.execute(
        f"CREATE VIRTUAL TABLE {fts} USING fts5({names}, content='', contentless_delete=1, "
        f"tokenize={quote_string(tokenize)})"
    )
    conn.execute(f"INSERT INTO {fts}(rowid, {names}) SELECT rowid, {names} FROM {qualified(schema, rows_name(table))}")
    conn.execute(_trigger_sql(schema, table, cols))


def drop(conn: apsw.Connection, schema: str, table: str) -> bool:
    """Drop the keyword index of ``table`` (its triggers and FTS5 table); False if it had none."""
    if columns(conn, schema, table) is None:
        return False
    conn.execute(
        "".join(f"DROP TRIGGER IF EXISTS {qualified(schema, n)};" for n in _trigger_names(table))
        + f"DROP TABLE IF EXISTS {qualified(schema, fts_name(table))};"
    )
    return True


def drop_orphan(conn: apsw.Connection, schema: str, table: str) -> None:
    """After ``DROP TABLE``: the rows table (and with it the triggers) is gone; drop the FTS5
    table of the index if one is left."""
    row = conn.execute(
        f"SELECT sql FROM {quote_ident(schema)}.sqlite_master WHERE type = 'table' AND name = ? COLLATE NOCASE",
        (fts_name(table),),
    ).fetchone()
    trig = conn.execute(
        f"SELECT 1 FROM {quote_ident(schema)}.sqlite_master WHERE type = 'trigger' AND name = ? COLLATE NOCASE",
        (table + TRIGGERS[0],),
    ).fetchone()
    if row is not None and "fts5" in str(row[0]).lower() and "contentless_delete" in str(row[0]) and trig is None:
        conn.execute(f"DROP TABLE {qualified(schema, fts_name(table))}")


def rename(conn: apsw.Connection, schema: str, old: str, new: str, cols: Sequence[str]) -> None:
    """After ``ALTER TABLE old RENAME TO new`` renamed the rows table: the index's FTS5 table and
    triggers take the new name (``cols``: the columns it covered, read before the rename)."""
    conn.execute("".join(f"DROP TRIGGER IF EXISTS {qualified(schema, n)};" for n in _trigger_names(old)))
    conn.execute(f"ALTER TABLE {qualified(schema, fts_name(old))} RENAME TO {quote_ident(fts_name(new))}")
    conn.execute(_trigger_sql(schema, new, cols))


def match_query(text: str, *, any_word: bool = True) -> str | None:
    """An FTS5 ``MATCH`` expression for the words of ``text``: each word an FTS5 string
    (``"word"``), joined by ``OR`` (``any_word``, ranked by bm25) or by ``AND``; None when the text
    has no word. Operators, quotes, parentheses, column filters and ``*`` in the text are not
    syntax here: ``"a" OR`` searches for the words ``a`` and ``OR``."""
    if not isinstance(text, str):
        raise HqError(f"keywords must be a str, got {type(text).__name__}")
    words = list(dict.fromkeys(_WORD.findall(text)))[:MAX_TERMS]  # first occurrences, in order
    if not words:
        return None
    return (" OR " if any_word else " AND ").join('"' + w.replace('"', '""') + '"' for w in words)
