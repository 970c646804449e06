"""Shared fixtures: a fresh hqdb database file per test, and seeded raw tables of codes."""

from __future__ import annotations

import numpy as np
import pytest

import hqdb


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "test.db"


@pytest.fixture
def db(db_path):
    conn = hqdb.connect(db_path)
    yield conn
    conn.close()


def random_table(db, name="t", n=500, dim=64, books=4, codewords=16, seed=0, extra="", chunk_size=None):
    """Create a raw hq table of ``n`` random rows; return (codes, qcodes, codebooks, rowids)."""
    rng = np.random.default_rng(seed)
    opts = f"dim={dim}, books={books}, codewords={codewords}"
    if chunk_size:
        opts += f", chunk_size={chunk_size}"
    quoted = '"' + name.replace('"', '""') + '"'
    db.execute(f"CREATE VIRTUAL TABLE {quoted} USING hq({opts}{extra})")
    codes = rng.integers(0, 256, (n, dim // 8), dtype=np.uint8)
    qdtype = np.uint8 if codewords <= 256 else np.uint16
    qcodes = rng.integers(0, codewords, (n, books)).astype(qdtype)
    # Integer-valued floats: every summation order gives the same float32, so results compare exactly.
    cb = rng.integers(-8, 9, (books, codewords, dim)).astype(np.float32)
    if books:
        hqdb.set_codebooks(db, name, cb)
    rowids = hqdb.insert_codes(db, name, codes, qcodes if books else None)
    return codes, qcodes, cb, rowids
