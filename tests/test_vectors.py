"""Vectors in, codes computed for you: hqdb.fit_table / hqdb.insert_vectors (issue 16)."""

from __future__ import annotations

import numpy as np
import pytest

import hqdb
from hqdb import kernels, quantize


def _vectors(n, dim=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_insert_vectors_stores_the_sign_bits_and_the_encoding(db):
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=4, codewords=16, title TEXT)")
    x = _vectors(500)
    cb = hqdb.fit_table(db, "t", x[:300])
    assert cb.shape == (4, 16, 64)
    assert np.array_equal(np.frombuffer(db.execute("SELECT hq_codebooks('t')").fetchone()[0], "<f4").reshape(cb.shape), cb)
    ids = hqdb.insert_vectors(db, "t", x, metadata={"title": [f"v{i}" for i in range(500)]})
    assert list(ids) == list(range(1, 501))
    stored = db.execute("SELECT code, qcode FROM t ORDER BY rowid").fetchall()
    assert [c for c, _ in stored] == [b.tobytes() for b in kernels.pack_bits(x)]
    assert [q for _, q in stored] == [q.tobytes() for q in quantize.encode(x, cb)]
    # float64 input is converted by value, not reinterpreted
    more = hqdb.insert_vectors(db, "t", x[:3].astype(np.float64))
    again = db.execute("SELECT code FROM t WHERE rowid IN (?, ?, ?) ORDER BY rowid", tuple(map(int, more))).fetchall()
    assert [c for (c,) in again] == [c for c, _ in stored[:3]]
    assert db.execute("SELECT hq_check()").fetchone() == ("ok",)


def test_encoding_matches_a_float64_reference(db):
    x = _vectors(2000, dim=128, seed=3)
    cb = quantize.fit_codebooks(x, 4, 256, seed=1)
    codes = quantize.encode(x, cb)
    residual = x.astype(np.float64)
    for b in range(4):
        d = ((residual[:, None, :] - cb[b][None].astype(np.float64)) ** 2).sum(2)
        best = d.min(1)
        got = d[np.arange(len(x)), codes[:, b].astype(np.int64)]
        assert np.all(got <= best + 1e-5)  # float32 may pick another index only in a near-tie
        residual -= cb[b][codes[:, b]]


@pytest.mark.parametrize("bad, message", [
    (np.zeros((3, 32), np.float32), r"shape \(N, 64\)"),
    (np.full((2, 64), np.nan, np.float32), "NaN or infinity"),
    (np.array([["a"] * 64]), "real-valued"),
    (np.zeros(64, np.float32), r"shape \(N, 64\)"),
])
def test_bad_vectors_are_refused_and_change_nothing(db, bad, message):
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=2, codewords=16)")
    hqdb.fit_table(db, "t", _vectors(100))
    with pytest.raises(hqdb.HqError, match=message):
        hqdb.insert_vectors(db, "t", bad)
    assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_insert_vectors_needs_codebooks_first(db):
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=64, books=2, codewords=16)")
    with pytest.raises(hqdb.HqError, match="fit_table"):
        hqdb.insert_vectors(db, "t", _vectors(5))
    db.execute("CREATE VIRTUAL TABLE b USING hq(dim=64, books=0)")
    hqdb.insert_vectors(db, "b", _vectors(5))  # sign bits only: nothing to fit
    with pytest.raises(hqdb.HqError, match="books=0"):
        hqdb.fit_table(db, "b", _vectors(5))
