"""Consistency check and rebuild of hq tables, straight from their shadow tables.

``check`` reads what is on disk (not any connection's code cache) and lists every way a table
disagrees with hqdb's invariants:

* each chunk's BLOBs have the sizes the table's shape implies, its validity map holds only 0/1,
  it has at least one occupied slot (empty chunks are deleted), free slots are zeroed, and the
  quantization codes of occupied slots are below ``codewords``;
* every row of ``<t>_rows`` that locates codes points at an occupied slot holding its rowid, and
  every occupied slot is pointed at by exactly the row it names (no orphan codes);
* a raw table's rows all have codes; queued inputs of a model-bound table belong to rows;
* the codebooks (raw tables) or the model (model-bound tables) load.

``rebuild`` rewrites a table's chunks from what survives: each row keeps the codes of the slot
it points at (or, failing that, of a slot that carries its rowid), orphan codes are dropped, and
the rows are packed densely in rowid order, so it is also the compaction step after deleting
many rows (then ``VACUUM`` gives the pages back to the file system).

SQL: ``SELECT hq_check()`` / ``hq_check('t')`` → ``'ok'`` or one problem per line;
``SELECT hq_rebuild('t')`` → JSON statistics. CLI: ``hqdb check DB``, ``hqdb rebuild DB TABLE``.
``PRAGMA integrity_check`` runs the same check on every hq table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

import apsw

from ..errors import CorruptTableError, ModelError, RebuildError
from .options import CodeSet, TableOptions
from .catalog import quote_ident
from ..txn import write_transaction

__all__ = ["check", "check_table", "rebuild_table", "RebuildError"]

MAX_PROBLEMS = 50  # per table; the rest are counted


@dataclass
class _Problems:
    table: str
    items: list[str] = field(default_factory=list)
    more: int = 0

    def add(self, text: str) -> None:
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(f"hq table {self.table}: {text}")
        else:
            self.more += 1

    def result(self) -> list[str]:
        return self.items + ([f"hq table {self.table}: ... and {self.more} more problems"] if self.more else [])


@dataclass
class _Slots:
    """The occupied slots of one code set as read from disk: parallel arrays, chunk order."""

    chunk: np.ndarray
    slot: np.ndarray
    rowid: np.ndarray
    codes: np.ndarray
    qcodes: np.ndarray


def _options(conn, schema: str, name: str) -> TableOptions:
    row = conn.execute(
        f"SELECT dim, books, codewords, chunk_size, options FROM {quote_ident(schema)}.hqdb_tables "
        "WHERE name = ? COLLATE NOCASE", (name,)
    ).fetchone()
    if row is None:
        raise HqdbError(f"no hq table named {name!r} in the catalog")
    try:
        return TableOptions.from_catalog(*row)
    except (ValueError, TypeError, KeyError) as e:
        raise HqdbError(f"hq table {name}: unreadable options in the catalog ({e})") from None


def _read_slots(conn, schema: str, name: str, opts: TableOptions, cset: CodeSet, problems: _Problems) -> _Slots:
    cs, cb, qb = opts.chunk_size, opts.code_bytes, opts.qcode_bytes
    table = f"{quote_ident(schema)}.{quote_ident(name + cset.chunks_suffix)}"
    parts: list[tuple] = []
    # CAST: a value someone stored as TEXT must not fail to decode before it can be reported.
    for chunk, types, valid, rowids, codes, qcodes in conn.execute(
        "SELECT chunk, typeof(valid) || typeof(rowids) || typeof(codes) || typeof(qcodes), "
        "CAST(valid AS BLOB), CAST(rowids AS BLOB), CAST(codes AS BLOB), CAST(qcodes AS BLOB) "
        f"FROM {table} ORDER BY chunk"
    ):
        where = f"{name + cset.chunks_suffix} chunk {chunk}"
        if types != "blob" * 4:
            problems.add(f"{where}: a column holds a non-BLOB value")
            continue
        sizes = [("valid", valid, cs), ("rowids", rowids, 8 * cs), ("codes", codes, cb * cs), ("qcodes", qcodes, qb * cs)]
        bad = [f"{col} is {len(v)} bytes, expected {n}" for col, v, n in sizes if len(v) != n]
        if bad:
            problems.add(f"{where}: wrong BLOB sizes (" + "; ".join(bad) + ")")
            continue
        v = np.frombuffer(valid, dtype=np.uint8)
        r = np.frombuffer(rowids, dtype="<i8")
        c = np.frombuffer(codes, dtype=np.uint8).reshape(cs, cb)
        q = np.frombuffer(qcodes, dtype=opts.qcode_dtype).reshape(cs, opts.books)
        if np.any(v > 1):
            problems.add(f"{where}: validity map holds values other than 0 and 1")
        occupied = v == 1
        if not occupied.any():
            problems.add(f"{where}: no occupied slot (empty chunks are deleted)")
        free = ~occupied
        if r[free].any() or c[free].any() or q[free].any():
            problems.add(f"{where}: free slots are not zeroed")
        if opts.books and occupied.any() and int(q[occupied].max()) >= opts.codewords:
            problems.add(f"{where}: a quantization code is >= codewords={opts.codewords}")
        idx = np.flatnonzero(occupied)
        parts.append((np.full(len(idx), chunk, dtype=np.int64), idx.astype(np.int64), r[idx], c[idx], q[idx]))
    if not parts:
        return _Slots(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                      np.zeros((0, cb), np.uint8), np.zeros((0, opts.books), opts.qcode_dtype))
    return _Slots(*(np.concatenate(a) for a in zip(*parts)))


def _read_rows(conn, schema: str, name: str, opts: TableOptions) -> list[tuple]:
    locs = [col for c in opts.code_sets for col in (c.chunk_col, c.slot_col)]
    return conn.execute(
        f"SELECT rowid, {', '.join(map(quote_ident, locs))} FROM {quote_ident(schema)}.{quote_ident(name + '_rows')}"
    ).fetchall()


def _match(rows: list[tuple], i: int, slots: _Slots):
    """Per row of ``rows``: index into ``slots`` of the slot the row points at and that holds its
    rowid (or -1), plus whether it points anywhere at all."""
    where = {(int(c), int(s)): j for j, (c, s) in enumerate(zip(slots.chunk, slots.slot))}
    found, points = [], []
    for row in rows:
        rowid, chunk, slot = row[0], row[1 + 2 * i], row[2 + 2 * i]
        points.append(chunk is not None or slot is not None)
        j = where.get((chunk, slot), -1) if isinstance(chunk, int) and isinstance(slot, int) else -1
        found.append(j if j >= 0 and int(slots.rowid[j]) == rowid else -1)
    return np.asarray(found, dtype=np.int64), np.asarray(points, dtype=bool)


def check_table(conn: apsw.Connection, name: str, schema: str = "main") -> list[str]:
    """Problems of hq table ``name`` (an empty list when it is consistent)."""
    problems = _Problems(name)
    opts = _options(conn, schema, name)
    rows = _read_rows(conn, schema, name, opts)
    rowids = np.asarray([r[0] for r in rows], dtype=np.int64)
    for i, cset in enumerate(opts.code_sets):
        slots = _read_slots(conn, schema, name, opts, cset, problems)
        found, points = _match(rows, i, slots)
        label = f"{cset.name} codes" if opts.model else "codes"
        for rowid in rowids[points & (found < 0)][:MAX_PROBLEMS]:
            problems.add(f"row {rowid} points at {label} that are missing or belong to another row")
        if not opts.model:
            for rowid in rowids[~points][:MAX_PROBLEMS]:
                problems.add(f"row {rowid} has no codes")
        claimed = np.zeros(len(slots.rowid), dtype=bool)
        claimed[found[found >= 0]] = True
        for j in np.flatnonzero(~claimed)[:MAX_PROBLEMS]:
            problems.add(f"orphan {label} in chunk {slots.chunk[j]} slot {slots.slot[j]} "
                         f"(rowid {slots.rowid[j]} does not point there)")
    if opts.model:
        _check_model(conn, schema, name, opts, rowids, problems)
    else:
        _check_codebooks(conn, schema, name, opts, problems)
    return problems.result()


def _check_codebooks(conn, schema, name, opts, problems) -> None:
    (blob,) = conn.execute(
        f"SELECT codebooks FROM {quote_ident(schema)}.hqdb_tables WHERE name = ? COLLATE NOCASE", (name,)
    ).fetchone()
    if blob is None:
        return
    want = opts.books * opts.codewords * opts.dim * 4
    if not isinstance(blob, bytes) or len(blob) != want:
        problems.add(f"codebooks are {len(blob) if isinstance(blob, bytes) else type(blob).__name__} bytes, expected {want}")
    elif not np.isfinite(np.frombuffer(blob, dtype="<f4")).all():
        problems.add("codebooks contain NaN or infinity")


def _check_model(conn, schema, name, opts, rowids, problems) -> None:
    from ..model.store import load_model

    try:
        model = load_model(conn, opts.model)
    except ModelError as e:
        problems.add(f"model {opts.model!r}: {e}")
    else:
        if (model.bits, model.books, model.codewords) != (opts.dim, opts.books, opts.codewords):
            problems.add(f"model {opts.model!r} no longer matches the table's shape")
        elif model.metric != opts.metric:
            problems.add(f"model {opts.model!r} has metric {model.metric!r} but the table {opts.metric!r}")
    pending = conn.execute(
        f"SELECT rowid, codeset FROM {quote_ident(schema)}.{quote_ident(name + '_pending')}"
    ).fetchall()
    known = set(rowids.tolist())
    sets = {c.name for c in opts.code_sets}
    for rowid, codeset in pending:
        if rowid not in known or codeset not in sets:
            problems.add(f"queued input for row {rowid} ({codeset}) has no row or modality")


def hq_tables(conn: apsw.Connection, schema: str = "main") -> list[str]:
    return [r[0] for r in conn.execute(f"SELECT name FROM {quote_ident(schema)}.hqdb_tables ORDER BY name")]


def check(conn: apsw.Connection, table: str | None = None, schema: str = "main") -> dict:
    """Check one hq table or all of them: ``{"ok": bool, "tables": {name: [problems]}}``."""
    names = [table] if table is not None else hq_tables(conn, schema)
    report = {name: check_table(conn, name, schema) for name in names}
    return {"ok": not any(report.values()), "tables": report}


def rebuild_table(conn: apsw.Connection, name: str, schema: str = "main", *, drop_missing: bool = False) -> dict:
    """Rewrite hq table ``name``'s chunks densely from the codes that survive.

    Each row keeps the codes of the slot it points at when that slot carries its rowid, else
    those of the first slot that carries its rowid. Codes no row claims are dropped. A raw
    table's row whose codes are lost cannot be searched: :class:`RebuildError` names them,
    unless ``drop_missing=True`` deletes those rows. (A model-bound table's row may lack a
    modality: its lost codes just become absent.) One transaction: all or nothing.
    """
    opts = _options(conn, schema, name)
    cs = opts.chunk_size
    stats = {"table": name, "rows": 0, "kept": {}, "lost": {}, "orphans_dropped": {},
             "chunks_before": {}, "chunks_after": {}, "rows_dropped": 0}
    with write_transaction(conn):
        rows = _read_rows(conn, schema, name, opts)
        rowids = np.asarray([r[0] for r in rows], dtype=np.int64)
        plans = []
        for i, cset in enumerate(opts.code_sets):
            slots = _read_slots(conn, schema, name, opts, cset, _Problems(name))
            found, points = _match(rows, i, slots)
            # Fallback: the first slot (chunk order) carrying the row's rowid.
            missing = found < 0
            if missing.any() and len(slots.rowid):
                order = np.argsort(slots.rowid, kind="stable")
                sorted_ids = slots.rowid[order]
                pos = np.searchsorted(sorted_ids, rowids[missing])
                ok = (pos < len(sorted_ids)) & (sorted_ids[np.minimum(pos, len(sorted_ids) - 1)] == rowids[missing])
                fill = np.where(ok, order[np.minimum(pos, len(order) - 1)], -1)
                found[missing] = fill
            lost = rowids[(found < 0) & (points | (not opts.model))]
            plans.append((cset, slots, found, lost))
            stats["chunks_before"][cset.name] = int(conn.execute(
                f"SELECT count(*) FROM {quote_ident(schema)}.{quote_ident(name + cset.chunks_suffix)}").fetchone()[0])
        drop = np.unique(np.concatenate([p[3] for p in plans])) if not opts.model else np.zeros(0, np.int64)
        if len(drop) and not drop_missing:
            shown = ", ".join(map(str, drop[:20].tolist())) + (" ..." if len(drop) > 20 else "")
            raise RebuildError(f"hq table {name}: {len(drop)} rows have lost their codes ({shown}); "
                               "rebuild with drop_missing=True to delete them")
        keep_row = ~np.isin(rowids, drop)
        rows_t = f"{quote_ident(schema)}.{quote_ident(name + '_rows')}"
        if len(drop):
            conn.executemany(f"DELETE FROM {rows_t} WHERE rowid = ?", [(int(r),) for r in drop])
        for cset, slots, found, lost in plans:
            sel = keep_row & (found >= 0)
            order = np.argsort(rowids[sel], kind="stable")
            src = found[sel][order]
            ids = rowids[sel][order]
            n = len(ids)
            n_chunks = (n + cs - 1) // cs
            valid = np.zeros(n_chunks * cs, np.uint8)
            valid[:n] = 1
            rid = np.zeros(n_chunks * cs, "<i8")
            rid[:n] = ids
            codes = np.zeros((n_chunks * cs, opts.code_bytes), np.uint8)
            codes[:n] = slots.codes[src]
            qcodes = np.zeros((n_chunks * cs, opts.books), opts.qcode_dtype)
            qcodes[:n] = slots.qcodes[src]
            chunks_t = f"{quote_ident(schema)}.{quote_ident(name + cset.chunks_suffix)}"
            conn.execute(f"DELETE FROM {chunks_t}")
            conn.executemany(
                f"INSERT INTO {chunks_t}(chunk, valid, rowids, codes, qcodes) VALUES (?, ?, ?, ?, ?)",
                [(c + 1, valid[c * cs:(c + 1) * cs].tobytes(), rid[c * cs:(c + 1) * cs].tobytes(),
                  codes[c * cs:(c + 1) * cs].tobytes(), qcodes[c * cs:(c + 1) * cs].tobytes())
                 for c in range(n_chunks)],
            )
            if opts.model:  # rows whose codes are lost lack this modality from now on
                conn.execute(f"UPDATE {rows_t} SET {quote_ident(cset.chunk_col)} = NULL, "
                             f"{quote_ident(cset.slot_col)} = NULL")
            pos = np.arange(n)
            conn.executemany(
                f"UPDATE {rows_t} SET {quote_ident(cset.chunk_col)} = ?, {quote_ident(cset.slot_col)} = ? WHERE rowid = ?",
                zip((pos // cs + 1).tolist(), (pos % cs).tolist(), ids.tolist()),
            )
            stats["kept"][cset.name] = n
            stats["lost"][cset.name] = int(len(lost))
            stats["orphans_dropped"][cset.name] = int(len(slots.rowid) - len(np.unique(src)))
            stats["chunks_after"][cset.name] = int(n_chunks)
        stats["rows"] = int(keep_row.sum())
        stats["rows_dropped"] = int(len(drop))
        conn.execute(f"UPDATE {quote_ident(schema)}.hqdb_tables SET version = version + 1 WHERE name = ? COLLATE NOCASE",
                     (name,))
    return stats


def register_functions(conn: apsw.Connection) -> None:
    """``hq_check()``, ``hq_check(table)``, ``hq_rebuild(table)``, ``hq_rebuild(table, drop_missing)``."""

    def hq_check(*args):
        if len(args) > 1:
            raise HqdbError("hq_check takes at most one argument (a table name)")
        report = check(conn, args[0] if args else None)
        lines = [p for ps in report["tables"].values() for p in ps]
        return "ok" if not lines else "\n".join(lines)

    def hq_rebuild(name, drop_missing=0):
        return json.dumps(rebuild_table(conn, name, drop_missing=bool(drop_missing)))

    conn.create_scalar_function("hq_check", hq_check, -1)
    conn.create_scalar_function("hq_rebuild", hq_rebuild, 1)
    conn.create_scalar_function("hq_rebuild", hq_rebuild, 2)
