"""Parsing and validation of ``CREATE VIRTUAL TABLE t USING hq(...)`` arguments.

Arguments are either options ``name=value`` (``dim=128``, ``books=4``, ``codewords=256``,
``chunk_size=1024``) or metadata column declarations ``name TYPE [PRIMARY KEY]`` with TYPE one
of TEXT, INTEGER, REAL, BLOB. Anything else is refused with a message naming the argument.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_OPTION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$", re.S)
# A column name may be written bare or in double quotes (for names that are SQL keywords).
_COLUMN = re.compile(r'^\s*("[^"]*"|[A-Za-z_][A-Za-z0-9_]*)\s+([A-Za-z]+)((?:\s+[A-Za-z]+)*)\s*$', re.S)

METADATA_TYPES = ("TEXT", "INTEGER", "REAL", "BLOB")
# Column names the table itself uses; a metadata column may not take them.
RESERVED = frozenset(
    {"rowid", "oid", "_rowid_", "code", "qcode", "distance", "hamming", "k", "candidates", "mode"}
)

MAX_DIM = 1024  # the kernels take codes of up to 128 bytes
MAX_BOOKS = 64
MAX_CODEWORDS = 65536
MAX_CHUNK_SIZE = 1 << 16
DEFAULT_CHUNK_SIZE = 1024


class OptionError(ValueError):
    """A CREATE VIRTUAL TABLE argument is unknown, malformed or out of range."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    key: bool = False  # PRIMARY KEY / UNIQUE: a user key, unique over the table


@dataclass(frozen=True)
class TableOptions:
    dim: int
    books: int
    codewords: int
    chunk_size: int = DEFAULT_CHUNK_SIZE
    columns: tuple[Column, ...] = field(default_factory=tuple)

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
        return json.dumps({"columns": [[c.name, c.type, c.key] for c in self.columns]})

    @classmethod
    def from_catalog(cls, dim: int, books: int, codewords: int, chunk_size: int, options: str) -> "TableOptions":
        cols = tuple(Column(n, t, bool(k)) for n, t, k in json.loads(options).get("columns", []))
        return cls(dim=dim, books=books, codewords=codewords, chunk_size=chunk_size, columns=cols)


def _int_option(name: str, raw: str, lo: int, hi: int) -> int:
    raw = raw.strip().strip("'\"")
    if not re.fullmatch(r"[+]?\d+", raw):
        raise OptionError(f"hq option {name}={raw!r}: expected an integer")
    value = int(raw)
    if not lo <= value <= hi:
        raise OptionError(f"hq option {name}={value}: must be between {lo} and {hi}")
    return value


def parse_args(args: tuple) -> TableOptions:
    """Turn the module arguments of CREATE VIRTUAL TABLE into validated :class:`TableOptions`."""
    opts: dict[str, int] = {}
    columns: list[Column] = []
    seen: set[str] = set()
    for arg in args:
        text = str(arg)
        m = _OPTION.match(text)
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
            else:
                raise OptionError(
                    f"unknown hq option {name!r} (known: dim, books, codewords, chunk_size)"
                )
            continue
        m = _COLUMN.match(text)
        if not m:
            raise OptionError(
                f"cannot parse hq argument {text!r}: expected option=value or 'name TYPE'"
            )
        name, ctype, rest = m.group(1).strip('"'), m.group(2).upper(), m.group(3).split()
        if not _IDENT.match(name):
            raise OptionError(f"invalid column name {name!r}")
        if name.lower() in RESERVED:
            raise OptionError(f"column name {name!r} is reserved by hq tables")
        if name.lower() in seen:
            raise OptionError(f"column {name!r} declared twice")
        if ctype not in METADATA_TYPES:
            raise OptionError(
                f"column {name!r}: type {ctype!r} not supported (use one of {', '.join(METADATA_TYPES)})"
            )
        constraint = " ".join(w.upper() for w in rest)
        if constraint not in ("", "PRIMARY KEY", "UNIQUE"):
            raise OptionError(f"column {name!r}: unsupported constraint {constraint!r}")
        key = bool(constraint)
        if key and any(c.key for c in columns):
            raise OptionError("only one column may be a key (PRIMARY KEY / UNIQUE)")
        seen.add(name.lower())
        columns.append(Column(name, ctype, key))
    if "dim" not in opts:
        raise OptionError("hq table needs dim=N (code length in bits, a multiple of 8)")
    books = opts.get("books", 4)
    codewords = opts.get("codewords", 256)
    return TableOptions(
        dim=opts["dim"],
        books=books,
        codewords=codewords,
        chunk_size=opts.get("chunk_size", DEFAULT_CHUNK_SIZE),
        columns=tuple(columns),
    )
