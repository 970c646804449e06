"""Parsing and validation of ``CREATE VIRTUAL TABLE t USING hq(...)`` arguments.

Arguments are either options ``name=value`` (``dim=128``, ``books=4``, ``codewords=256``,
``chunk_size=1024``, ``metric='ip'`` or ``'l2'`` — how AQD compares a query with a quantized
item: inner product, the HQ paper's, or squared Euclidean distance, CQ's; ``rerank='int8'``,
``'float16'`` or ``'float32'`` — a raw table keeps each row's vector and re-ranks exactly;
``index='mih'`` and ``mih_m=N`` — an in-memory multi-index hash for exact Hamming search,
:mod:`hqdb.engine.mih`) or metadata column
declarations ``name TYPE [PRIMARY KEY]`` with TYPE one of TEXT, INTEGER, REAL, BLOB. Anything
else is refused with a message naming the argument.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ..errors import CorruptTableError, OptionError
from ..kernels import MAX_BITS

# Patterns are used with fullmatch() and anchored with \Z, never $ (which lets a trailing newline
# through): a name that reaches SQL is an identifier and nothing more.
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
_OPTION = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*\Z", re.S)
# A column name may be written bare or in double quotes (for names that are SQL keywords).
_COLUMN = re.compile(r'\s*("[^"]*"|[A-Za-z_][A-Za-z0-9_]*)\s+([A-Za-z]+)((?:\s+[A-Za-z]+)*)\s*\Z', re.S)
# A stored model's name (as hqdb.model.store allows it).
_MODEL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}\Z")

METADATA_TYPES = ("TEXT", "INTEGER", "REAL", "BLOB")
# Column names the table itself uses; a metadata column may not take them (nor may a modality:
# hqdb.model.model.RESERVED_NAMES is the same set).
RESERVED = frozenset({"rowid", "oid", "_rowid_", "code", "qcode", "distance", "hamming", "k", "candidates", "mode"})

MAX_DIM = MAX_BITS
MAX_BOOKS = 64
MAX_CODEWORDS = 65536
MAX_CHUNK_SIZE = 1 << 16
DEFAULT_CHUNK_SIZE = 1024
METRICS = ("ip", "l2")
# rerank=: raw tables keep each row's vector in this form and re-rank the shortlist exactly
RERANKS = ("float32", "float16", "int8")
# index=: an in-memory search index over the bit codes (hqdb.engine.mih); mih_m= its substrings
INDEXES = ("mih",)

# A model-bound table takes books and codewords from its model, whose own ranges are wider
# (hqdb.model.model.TrainedModel.from_state): books 0..MAX_BITS, codewords 1..65536.
MODEL_BOOKS = (0, MAX_BITS)
MODEL_CODEWORDS = (1, MAX_CODEWORDS)


def mih_m_range(dim: int) -> tuple[int, int]:
    """The substring counts mih_m= allows for ``dim``-bit codes: substrings of 8..32 bits
    (at least one substring)."""
    lo = -(-dim // 32)
    return lo, max(lo, dim // 8)


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    key: bool = False  # PRIMARY KEY / UNIQUE: a user key, unique over the table


@dataclass(frozen=True)
class CodeSet:
    """One set of codes per row: a raw table has one (columns code/qcode); a model-bound table
    has one per modality ``m`` (input column ``m``, codes in ``m_code``/``m_qcode``)."""

    name: str
    input_col: str | None  # where features / text arrive (model-bound tables)
    code_col: str
    qcode_col: str
    chunks_suffix: str  # shadow table <table><suffix> holding this set's chunks
    chunk_col: str  # columns of <table>_rows locating a row's codes
    slot_col: str


@dataclass(frozen=True)
class TableOptions:
    dim: int
    books: int
    codewords: int
    chunk_size: int = DEFAULT_CHUNK_SIZE
    columns: tuple[Column, ...] = field(default_factory=tuple)
    model: str | None = None
    modalities: tuple[str, ...] = ()
    metric: str = "ip"
    rerank: str | None = None  # raw tables: how each row's vector is kept for the exact re-rank
    index: str | None = None  # 'mih': multi-index hashing for 'hamming' / 'two_stage' searches
    mih_m: int | None = None  # MIH substrings per code (None: chosen from the code length and rows)

    @property
    def code_sets(self) -> tuple[CodeSet, ...]:
        if self.model is None:
            return (CodeSet("code", None, "code", "qcode", "_chunks", "chunk", "slot"),)
        return tuple(
            CodeSet(m, m, f"{m}_code", f"{m}_qcode", f"_{m}_chunks", f"{m}_chunk", f"{m}_slot") for m in self.modalities
        )

    @property
    def code_bytes(self) -> int:
        return self.dim // 8

    @property
    def qcode_dtype(self) -> str:
        return "<u1" if self.codewords <= 256 else "<u2"

    @property
    def qcode_bytes(self) -> int:
        return self.books * (1 if self.codewords <= 256 else 2)

    @property
    def key_column(self) -> Column | None:
        return next((c for c in self.columns if c.key), None)

    def to_json(self) -> str:
        return json.dumps(
            {
                "columns": [[c.name, c.type, c.key] for c in self.columns],
                "model": self.model,
                "modalities": list(self.modalities),
                "metric": self.metric,
                # only when set: tables created before rerank existed keep their catalog JSON
                **({"rerank": self.rerank} if self.rerank else {}),
                # likewise: tables without an index keep their catalog JSON
                **({"index": self.index} if self.index else {}),
                **({"mih_m": self.mih_m} if self.mih_m is not None else {}),
            }
        )

    @classmethod
    def from_catalog(
        cls, dim, books, codewords, chunk_size, options, *, table: str = "?", where: str = "the catalog"
    ) -> TableOptions:
        """Options from a catalog row, every field checked with the ranges CREATE applies (a
        file may come from anyone): :class:`CorruptTableError` naming the table and the field."""
        try:
            return _from_catalog(dim, books, codewords, chunk_size, options)
        except _Invalid as e:
            raise CorruptTableError(
                f"hq table {table!r}: its entry in {where} is invalid: field {e.field!r}: {e.message}"
            ) from None


class _Invalid(Exception):
    """A value outside what hqdb itself would write: ``field`` and a message."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _stored_int(field: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _Invalid(field, f"must be an integer between {lo} and {hi}, got {_show(value)}")
    return value


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_shape(dim, books, codewords, chunk_size, model: bool) -> None:
    """The table shape's ranges (CREATE and the catalog): :class:`_Invalid` naming the field."""
    _stored_int("dim", dim, 8, MAX_DIM)
    if dim % 8:
        raise _Invalid("dim", f"must be a multiple of 8, got {dim}")
    _stored_int("books", books, *(MODEL_BOOKS if model else (0, MAX_BOOKS)))
    _stored_int("codewords", codewords, *(MODEL_CODEWORDS if model else (2, MAX_CODEWORDS)))
    _stored_int("chunk_size", chunk_size, 8, MAX_CHUNK_SIZE)


def is_identifier(name) -> bool:
    """Whether ``name`` may name a column or modality: ``[A-Za-z_][A-Za-z0-9_]*``, at most 128
    characters (no quotes, semicolons, spaces or newlines)."""
    return isinstance(name, str) and _IDENT.fullmatch(name) is not None


def check_layout(columns: tuple[Column, ...], model: str | None, modalities: tuple[str, ...]) -> None:
    """Column and modality names: identifiers, none reserved, no two alike (SQLite compares
    column names case-insensitively), none taking a column of the table's own (a modality's
    input / code / qcode columns, or the chunk / slot locators of ``<table>_rows``)."""
    if model is not None and not (isinstance(model, str) and _MODEL_NAME.fullmatch(model)):
        raise _Invalid("model", f"must be a model name (1-128 letters, digits, '_', '.', '-'), got {_show(model)}")
    if model is None and modalities:
        raise _Invalid("modalities", "a raw table (no model) has no modalities")
    if model is not None and not modalities:
        raise _Invalid("modalities", "a model-bound table needs at least one modality")
    owner: dict[str, str] = {}
    for m in modalities:
        if not is_identifier(m):
            raise _Invalid("modalities", f"modality name {_show(m)} is not an identifier")
        if m.lower() in RESERVED:
            raise _Invalid("modalities", f"modality name {m!r} is reserved by hq tables")
        for col in (m, f"{m}_code", f"{m}_qcode", f"{m}_chunk", f"{m}_slot"):
            if col.lower() in owner:
                raise _Invalid(
                    "modalities", f"modality {m!r} needs column {col!r}, already used by {owner[col.lower()]}"
                )
            owner[col.lower()] = f"modality {m!r}"
    if model is None:
        owner.update({c: f"the table's locator column {c!r} (in <table>_rows)" for c in ("chunk", "slot")})
    keys = 0
    for c in columns:
        if not is_identifier(c.name):
            raise _Invalid("columns", f"column name {_show(c.name)} is not an identifier")
        if c.name.lower() in RESERVED:
            raise _Invalid("columns", f"column name {c.name!r} is reserved by hq tables")
        if c.name.lower() in owner:
            raise _Invalid("columns", f"column {c.name!r} is used by {owner[c.name.lower()]}")
        owner[c.name.lower()] = f"column {c.name!r}"
        if c.type not in METADATA_TYPES:
            raise _Invalid("columns", f"column {c.name!r}: type {_show(c.type)} not one of {', '.join(METADATA_TYPES)}")
        keys += bool(c.key)
    if keys > 1:
        raise _Invalid("columns", "only one column may be a key (PRIMARY KEY / UNIQUE)")


def _from_catalog(dim, books, codewords, chunk_size, options) -> TableOptions:
    if isinstance(options, bytes):
        try:
            options = options.decode("utf-8")
        except UnicodeDecodeError:
            raise _Invalid("options", "is not UTF-8 text") from None
    if not isinstance(options, str):
        raise _Invalid("options", f"must be JSON text, got {type(options).__name__}")
    try:
        doc = json.loads(options)
    except (ValueError, RecursionError) as e:
        raise _Invalid("options", f"is not valid JSON ({str(e)[:80]})") from None
    if not isinstance(doc, dict):
        raise _Invalid("options", f"must be a JSON object, got {type(doc).__name__}")
    model = doc.get("model")
    check_shape(dim, books, codewords, chunk_size, model is not None)
    raw_cols = doc.get("columns", [])
    if not isinstance(raw_cols, list):
        raise _Invalid("columns", "must be a list of [name, type, key]")
    cols = []
    for c in raw_cols:
        if not isinstance(c, list) or len(c) != 3 or not isinstance(c[2], (bool, int)) or c[2] not in (0, 1):
            raise _Invalid("columns", f"each column must be [name, type, key], got {_show(c)}")
        cols.append(Column(c[0], c[1], bool(c[2])))
    modalities = doc.get("modalities", [])
    if not isinstance(modalities, list):
        raise _Invalid("modalities", "must be a list of names")
    check_layout(tuple(cols), model, tuple(modalities))
    metric = doc.get("metric", "ip")
    if metric not in METRICS:
        raise _Invalid("metric", f"must be one of {', '.join(METRICS)}, got {_show(metric)}")
    rerank = doc.get("rerank")
    if rerank is not None and (rerank not in RERANKS or model is not None):
        raise _Invalid("rerank", f"must be one of {', '.join(RERANKS)} on a raw table, got {_show(rerank)}")
    if rerank is not None and any(c.name.lower() == "vector" for c in cols):
        raise _Invalid("columns", "a rerank table's column 'vector' holds its vectors")
    index = doc.get("index")
    if index is not None and index not in INDEXES:
        raise _Invalid("index", f"must be one of {', '.join(INDEXES)}, got {_show(index)}")
    mih_m = doc.get("mih_m")
    if mih_m is not None:
        if index != "mih":
            raise _Invalid("mih_m", "is only for index='mih'")
        _stored_int("mih_m", mih_m, *mih_m_range(dim))
    return TableOptions(
        dim=dim,
        books=books,
        codewords=codewords,
        chunk_size=chunk_size,
        columns=tuple(cols),
        model=model,
        modalities=tuple(modalities),
        metric=metric,
        rerank=rerank,
        index=index,
        mih_m=mih_m,
    )


def _int_option(name: str, raw: str, lo: int, hi: int) -> int:
    raw = raw.strip().strip("'\"")
    if not re.fullmatch(r"[+]?\d+\Z", raw):
        raise OptionError(f"hq option {name}={raw!r}: expected an integer")
    value = int(raw)
    if not lo <= value <= hi:
        raise OptionError(f"hq option {name}={value}: must be between {lo} and {hi}")
    return value


def parse_args(args: tuple, resolve_model=None) -> TableOptions:
    """Turn the module arguments of CREATE VIRTUAL TABLE into validated :class:`TableOptions`.

    ``resolve_model(name)`` returns ``(dim, books, codewords, modalities, metric)`` of a stored
    model (for ``model='name'``), or raises :class:`OptionError`.
    """
    opts: dict[str, int] = {}
    metric = "ip"
    rerank: str | None = None
    index: str | None = None
    model: str | None = None
    columns: list[Column] = []
    seen: set[str] = set()
    for arg in args:
        text = str(arg)
        m = _OPTION.fullmatch(text)
        if m:
            name = m.group(1).lower()
            if name in opts:
                raise OptionError(f"hq option {name!r} given twice")
            if name == "dim":
                opts[name] = _int_option(name, m.group(2), 8, MAX_DIM)
                if opts[name] % 8:
                    raise OptionError(f"hq option dim={opts[name]}: must be a multiple of 8")
            elif name == "books":
                opts[name] = _int_option(name, m.group(2), 0, MAX_BOOKS)
            elif name == "codewords":
                opts[name] = _int_option(name, m.group(2), 2, MAX_CODEWORDS)
            elif name == "chunk_size":
                opts[name] = _int_option(name, m.group(2), 8, MAX_CHUNK_SIZE)
            elif name == "model":
                raw = m.group(2).strip()
                if len(raw) < 2 or raw[0] not in "'\"" or raw[-1] != raw[0]:
                    raise OptionError(f"hq option model={raw}: expected a quoted name, e.g. model='wiki64'")
                model = raw[1:-1]
                opts[name] = 1
            elif name == "metric":
                raw = m.group(2).strip()
                metric = raw[1:-1] if len(raw) >= 2 and raw[0] in "'\"" and raw[-1] == raw[0] else raw
                if metric not in METRICS:
                    raise OptionError(
                        f"hq option metric={raw}: must be 'ip' (inner product) or 'l2' (squared Euclidean distance)"
                    )
                opts[name] = 1
            elif name == "rerank":
                raw = m.group(2).strip()
                rerank = raw[1:-1] if len(raw) >= 2 and raw[0] in "'\"" and raw[-1] == raw[0] else raw
                if rerank not in RERANKS:
                    raise OptionError(
                        f"hq option rerank={raw}: must be 'float32', 'float16' or 'int8' (how each row's vector is "
                        "kept for the exact re-rank)"
                    )
                opts[name] = 1
            elif name == "index":
                raw = m.group(2).strip()
                index = raw[1:-1] if len(raw) >= 2 and raw[0] in "'\"" and raw[-1] == raw[0] else raw
                if index not in INDEXES:
                    raise OptionError(f"hq option index={raw}: must be 'mih' (multi-index hashing)")
                opts[name] = 1
            elif name == "mih_m":
                opts[name] = _int_option(name, m.group(2), 1, MAX_DIM)
            else:
                raise OptionError(
                    f"unknown hq option {name!r} (known: dim, books, codewords, chunk_size, metric, rerank, index, "
                    "mih_m, model)"
                )
            continue
        m = _COLUMN.fullmatch(text)
        if not m:
            raise OptionError(f"cannot parse hq argument {text!r}: expected option=value or 'name TYPE'")
        name, ctype, rest = m.group(1).strip('"'), m.group(2).upper(), m.group(3).split()
        if not is_identifier(name):
            raise OptionError(f"invalid column name {name!r}")
        if name.lower() in RESERVED:
            raise OptionError(f"column name {name!r} is reserved by hq tables")
        if name.lower() in seen:
            raise OptionError(f"column {name!r} declared twice")
        if ctype not in METADATA_TYPES:
            raise OptionError(f"column {name!r}: type {ctype!r} not supported (use one of {', '.join(METADATA_TYPES)})")
        constraint = " ".join(w.upper() for w in rest)
        if constraint not in ("", "PRIMARY KEY", "UNIQUE"):
            raise OptionError(f"column {name!r}: unsupported constraint {constraint!r}")
        key = bool(constraint)
        if key and any(c.key for c in columns):
            raise OptionError("only one column may be a key (PRIMARY KEY / UNIQUE)")
        seen.add(name.lower())
        columns.append(Column(name, ctype, key))
    chunk_size = opts.get("chunk_size", DEFAULT_CHUNK_SIZE)
    mih_m = opts.get("mih_m")
    if mih_m is not None and index != "mih":
        raise OptionError("hq option mih_m= needs index='mih'")
    if model is not None:
        if rerank:
            raise OptionError("hq option rerank= is for raw tables (a model-bound table has no vectors to keep)")
        clash = sorted({"dim", "books", "codewords", "metric"} & set(opts))
        if clash:
            raise OptionError(f"hq options {', '.join(clash)} come from the model: drop them when model= is given")
        if resolve_model is None:
            raise OptionError("model-bound tables need hqdb.connect()")
        dim, books, codewords, modalities, metric = resolve_model(model)
        taken = {c.name.lower() for c in columns}
        for mod in modalities:
            for col in (mod, f"{mod}_code", f"{mod}_qcode"):
                if col.lower() in taken:
                    raise OptionError(f"column {col!r} is used by the model's {mod!r} modality")
        try:  # what the catalog will be checked against when the table is opened
            check_shape(dim, books, codewords, chunk_size, True)
            check_layout(tuple(columns), model, tuple(modalities))
        except _Invalid as e:
            raise OptionError(f"hq table with model={model!r}: {e}") from None
        _check_mih_m(mih_m, dim)
        return TableOptions(
            dim=dim,
            books=books,
            codewords=codewords,
            chunk_size=chunk_size,
            columns=tuple(columns),
            model=model,
            modalities=tuple(modalities),
            metric=metric,
            index=index,
            mih_m=mih_m,
        )
    if "dim" not in opts:
        raise OptionError("hq table needs dim=N (code length in bits, a multiple of 8) or model='name'")
    try:
        check_layout(tuple(columns), None, ())
    except _Invalid as e:
        raise OptionError(str(e.message)) from None
    if rerank and any(c.name.lower() == "vector" for c in columns):
        raise OptionError("column name 'vector' is taken by rerank= (it holds each row's vector)")
    _check_mih_m(mih_m, opts["dim"])
    return TableOptions(
        dim=opts["dim"],
        books=opts.get("books", 4),
        codewords=opts.get("codewords", 256),
        chunk_size=chunk_size,
        columns=tuple(columns),
        metric=metric,
        rerank=rerank,
        index=index,
        mih_m=mih_m,
    )


def _check_mih_m(mih_m: int | None, dim: int) -> None:
    if mih_m is None:
        return
    lo, hi = mih_m_range(dim)
    if not lo <= mih_m <= hi:
        raise OptionError(
            f"hq option mih_m={mih_m}: {dim}-bit codes split into {lo}..{hi} substrings (of 8..32 bits each)"
        )
