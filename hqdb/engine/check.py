"""Consistency check and rebuild of hq tables, straight from their shadow tables.

``check`` reads what is on disk (not any connection's code cache) and lists every way a table
disagrees with hqdb's invariants:

* each chunk's BLOBs have the sizes the table's shape implies, its validity map holds only 0/1,
  it has at least one occupied slot (empty chunks are deleted), free slots are zeroed, and the
  quantization codes of occupied slots are below ``codewords``;
* every row of ``<t>_rows`` that locates codes points at an occupied slot holding its rowid, and
  every occupied slot is pointed at by exactly the row it names (no orphan codes);
* a raw table's rows all have codes;
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

from dataclasses import dataclass, field
from typing import Any

import apsw
import numpy as np

from ..errors import CorruptTableError, HqdbError, HqError, ModelError, RebuildError
from ..txn import write_transaction
from . import catalog
from .catalog import quote_ident
from .options import CodeSet, TableOptions
from .table import Table

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
    vectors: np.ndarray | None = None  # a rerank table's stored vectors of those slots
    scales: np.ndarray | None = None


class _NoSuchTable(HqError):
    """The table asked for is not in the catalog (a user error, not a problem of the file)."""


def _entry(conn, schema: str, name: str) -> catalog.Entry:
    entry = catalog.read_entry(conn, schema, name)
    if entry is None:
        raise _NoSuchTable(f"no hq table named {name!r} in the catalog")
    return entry


def _read_slots(conn, schema: str, name: str, opts: TableOptions, cset: CodeSet, problems: _Problems) -> _Slots:
    cs, cb, qb = opts.chunk_size, opts.code_bytes, opts.qcode_bytes
    table = catalog.qualified(schema, catalog.chunks_name(name, cset))
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
        sizes = [
            ("valid", valid, cs),
            ("rowids", rowids, 8 * cs),
            ("codes", codes, cb * cs),
            ("qcodes", qcodes, qb * cs),
        ]
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
        return _Slots(
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros((0, cb), np.uint8),
            np.zeros((0, opts.books), opts.qcode_dtype),
        )
    slots = _Slots(*(np.concatenate(a) for a in zip(*parts)))
    if opts.rerank:
        _attach_vectors(conn, schema, name, opts, slots, problems)
    return slots


def _attach_vectors(conn, schema: str, name: str, opts: TableOptions, slots: _Slots, problems: _Problems) -> None:
    """A rerank table's stored vectors, one ``<t>_vectors`` row per chunk of codes: checked,
    and attached to the occupied slots (slots whose chunk has none are dropped as lost)."""
    cs = opts.chunk_size
    dtype = np.dtype({"float32": "<f4", "float16": "<f2", "int8": "i1"}[str(opts.rerank)])
    found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for chunk, types, vectors, scales in conn.execute(
        "SELECT chunk, typeof(vectors) || typeof(scales), CAST(vectors AS BLOB), CAST(scales AS BLOB) "
        f"FROM {catalog.qualified(schema, name + catalog.VECTORS)} ORDER BY chunk"
    ):
        where = f"{name}{catalog.VECTORS} chunk {chunk}"
        if types != "blob" * 2 or len(vectors) != cs * opts.dim * dtype.itemsize or len(scales) != 4 * cs:
            problems.add(f"{where}: wrong BLOB types or sizes")
            continue
        v = np.frombuffer(vectors, dtype=dtype).reshape(cs, opts.dim)
        s = np.frombuffer(scales, dtype="<f4")
        if not np.isfinite(s).all() or (dtype.kind == "f" and not np.isfinite(v).all()):
            problems.add(f"{where}: vectors contain NaN or infinity")
            continue
        found[int(chunk)] = (v, s)
    chunks = set(slots.chunk.tolist())
    for chunk in sorted(set(found) - chunks)[:MAX_PROBLEMS]:
        problems.add(f"{name}{catalog.VECTORS} chunk {chunk}: vectors of a chunk that has no codes")
    keep = np.array([int(c) in found for c in slots.chunk], dtype=bool)
    for chunk in sorted(chunks - set(found))[:MAX_PROBLEMS]:
        problems.add(f"{name + opts.code_sets[0].chunks_suffix} chunk {chunk}: no stored vectors")
    for name_, arr in (("chunk", slots.chunk), ("slot", slots.slot), ("rowid", slots.rowid)):
        setattr(slots, name_, arr[keep])
    slots.codes, slots.qcodes = slots.codes[keep], slots.qcodes[keep]
    slots.vectors = np.array([found[int(c)][0][s] for c, s in zip(slots.chunk, slots.slot)], dtype=dtype).reshape(
        -1, opts.dim
    )
    slots.scales = np.array([found[int(c)][1][s] for c, s in zip(slots.chunk, slots.slot)], dtype=np.float32)


def _missing_shadows(conn, schema: str, name: str, opts: TableOptions) -> list[str]:
    """The shadow tables the table needs (rows, chunks per code set) that the schema lacks."""
    need = [catalog.rows_name(name)] + [catalog.chunks_name(name, c) for c in opts.code_sets]
    have = {  # as BLOBs: a name that is not UTF-8 must not stop the check
        bytes(r[0]).decode("utf-8", "replace").lower()
        for r in conn.execute(
            f"SELECT CAST(name AS BLOB) FROM {quote_ident(schema)}.sqlite_master WHERE type = 'table'"
        )
        if r[0] is not None
    }
    return [t for t in need if t.lower() not in have]


def _read_rows(conn, schema: str, name: str, opts: TableOptions) -> list[tuple]:
    # A locator that is not an integer (TEXT, perhaps not even UTF-8) points nowhere: -1.
    locs = [
        f"CASE WHEN typeof({q}) IN ('integer', 'null') THEN {q} ELSE -1 END"
        for c in opts.code_sets
        for q in (quote_ident(c.chunk_col), quote_ident(c.slot_col))
    ]
    return conn.execute(
        f"SELECT rowid, {', '.join(locs)} FROM {catalog.qualified(schema, catalog.rows_name(name))}"
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
    entry = _entry(conn, schema, name)
    name, opts = entry.name, entry.opts
    problems = _Problems(name)
    missing = _missing_shadows(conn, schema, name, opts)
    if missing:
        for table in missing:
            problems.add(f"shadow table {table} is missing")
        return problems.result()
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
            problems.add(
                f"orphan {label} in chunk {slots.chunk[j]} slot {slots.slot[j]} "
                f"(rowid {slots.rowid[j]} does not point there)"
            )
    if opts.model:
        _check_model(conn, schema, name, opts, rowids, problems)
    else:
        _check_codebooks(conn, schema, name, opts, problems)
    return problems.result()


def _check_codebooks(conn, schema, name, opts, problems) -> None:
    blob = catalog.read_codebooks(conn, schema, name)
    if blob is None:
        return
    want = opts.books * opts.codewords * opts.dim * 4
    joint = (opts.books + opts.code_bytes) * 256 * opts.dim * 4 if opts.codewords == 256 and opts.books else want
    if not isinstance(blob, bytes) or len(blob) not in (want, joint):
        problems.add(
            f"codebooks are {len(blob) if isinstance(blob, bytes) else type(blob).__name__} bytes, expected {want}"
        )
    elif not np.isfinite(np.frombuffer(blob, dtype="<f4")).all():
        problems.add("codebooks contain NaN or infinity")


def _check_model(conn, schema, name, opts, rowids, problems) -> None:
    from ..model.store import load_model

    try:
        model = load_model(conn, opts.model)
    except ModelError as e:
        problems.add(f"model {opts.model!r}: {e}")
    except Exception as e:  # a check reports what it cannot load; it does not stop at it
        problems.add(f"model {opts.model!r} cannot be loaded: {type(e).__name__}: {e}")
    else:
        if (model.bits, model.books, model.codewords) != (opts.dim, opts.books, opts.codewords):
            problems.add(f"model {opts.model!r} no longer matches the table's shape")
        elif tuple(model.modalities) != opts.modalities:
            problems.add(
                f"model {opts.model!r} has modalities {list(model.modalities)} but the table {list(opts.modalities)}"
            )
        elif model.metric != opts.metric:
            problems.add(f"model {opts.model!r} has metric {model.metric!r} but the table {opts.metric!r}")


def check(conn: apsw.Connection, table: str | None = None, schema: str = "main") -> dict:
    """Check one hq table or all of them: ``{"ok": bool, "tables": {name: [problems]}}``."""
    names = [table] if table is not None else catalog.list_names(conn, schema)
    report = {}
    for name in names:
        try:
            report[name] = check_table(conn, name, schema)
        except _NoSuchTable:
            if table is not None:
                raise
            report[name] = [f"hq table {name!r}: its name in the catalog cannot be read (not UTF-8 text?)"]
        except (HqdbError, apsw.Error) as e:  # a catalog entry or shadow table hqdb cannot read
            report[name] = [f"hq table {name}: cannot be checked: {e}"]
    return {"ok": not any(report.values()), "tables": report}


def rebuild_table(conn: apsw.Connection, name: str, schema: str = "main", *, drop_missing: bool = False) -> dict:
    """Rewrite hq table ``name``'s chunks densely from the codes that survive.

    Each row keeps the codes of the slot it points at when that slot carries its rowid, else
    those of the first slot that carries its rowid. Codes no row claims are dropped. A raw
    table's row whose codes are lost cannot be searched: :class:`RebuildError` names them,
    unless ``drop_missing=True`` deletes those rows. (A model-bound table's row may lack a
    modality: its lost codes just become absent.) One transaction: all or nothing.
    """
    entry = _entry(conn, schema, name)
    opts = entry.opts
    cs = opts.chunk_size
    missing = _missing_shadows(conn, schema, entry.name, opts)
    if missing:
        raise CorruptTableError(f"hq table {entry.name}: shadow table(s) {', '.join(missing)} missing: cannot rebuild")
    stats: dict[str, Any] = {
        "table": name,
        "rows": 0,
        "kept": {},
        "lost": {},
        "orphans_dropped": {},
        "chunks_before": {},
        "chunks_after": {},
        "rows_dropped": 0,
    }
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
            stats["chunks_before"][cset.name] = int(
                catalog.scalar(
                    conn, f"SELECT count(*) FROM {catalog.qualified(schema, catalog.chunks_name(name, cset))}"
                )
            )
        drop = np.unique(np.concatenate([p[3] for p in plans])) if not opts.model else np.zeros(0, np.int64)
        if len(drop) and not drop_missing:
            shown = ", ".join(map(str, drop[:20].tolist())) + (" ..." if len(drop) > 20 else "")
            raise RebuildError(
                f"hq table {name}: {len(drop)} rows have lost their codes ({shown}); "
                "rebuild with drop_missing=True to delete them"
            )
        keep_row = ~np.isin(rowids, drop)
        per_set = []
        for cset, slots, found, lost in plans:
            sel = keep_row & (found >= 0)
            order = np.argsort(rowids[sel], kind="stable")
            src = found[sel][order]
            kept: tuple = (rowids[sel][order], slots.codes[src], slots.qcodes[src])
            if slots.vectors is not None:
                assert slots.scales is not None
                kept += (slots.vectors[src], slots.scales[src])
            per_set.append(kept)
            n = len(src)
            stats["kept"][cset.name] = n
            stats["lost"][cset.name] = int(len(lost))
            stats["orphans_dropped"][cset.name] = int(len(slots.rowid) - len(np.unique(src)))
            stats["chunks_after"][cset.name] = int((n + cs - 1) // cs)
        Table(conn, schema, entry.name, opts).rewrite(per_set, drop)
        stats["rows"] = int(keep_row.sum())
        stats["rows_dropped"] = int(len(drop))
    return stats
