"""Hostile input at every entry point: CREATE arguments, table names, query blobs, inserted code
and feature values, codebook blobs, stored model rows and npz files. Each either works or fails
with a clear hqdb/SQLite error; the process never crashes and a failed write changes nothing.

``HQDB_FUZZ_EXAMPLES`` sets the examples per fuzzer (default 150; docs/reliability.md reports a
longer run)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import apsw
import hqdb
from hqdb.engine.check import check

from conftest import random_table

EXAMPLES = int(os.environ.get("HQDB_FUZZ_EXAMPLES", "150"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Errors a user may see: SQLite's (hq tables raise apsw.SQLError subclasses) and hqdb's own.
CLEAR = (apsw.Error, hqdb.HqdbError, ValueError, KeyError, TypeError)

_TOKENS = st.sampled_from([
    "dim=64", "dim=8", "dim=1024", "dim=1032", "dim=7", "dim=-8", "dim=0x40", "dim=", "books=0", "books=4",
    "books=300", "codewords=2", "codewords=65536", "codewords=65537", "chunk_size=8", "chunk_size=7",
    "model='x'", "model=x", "title TEXT", "year INTEGER", "score REAL", "pic BLOB", "k TEXT", "code TEXT",
    "a TEXT UNIQUE", "b TEXT PRIMARY KEY", "c TEXT NOT NULL", "\"q\"\"uote\" TEXT", "x; DROP TABLE t",
    "'", "\"", ")", "(", "dim=64)", "", " ", "é TEXT", "dim=99999999999999999999",
])


def _fresh(path):
    db = hqdb.connect(path)
    _open.append(db)
    while len(_open) > 4:  # hypothesis runs many examples: keep few connections open
        _open.pop(0).close()
    return db


_open: list = []


def _catalog(db):
    return (db.execute("SELECT count(*) FROM hqdb_tables").fetchone(),
            db.execute("SELECT count(*) FROM sqlite_master").fetchone())


@fuzz
@given(args=st.lists(st.one_of(_TOKENS, st.text(max_size=12)), max_size=6))
def test_create_arguments(tmp_path_factory, args):
    db = _fresh(tmp_path_factory.mktemp("c") / "f.db")
    before = _catalog(db)
    try:
        db.execute(f"CREATE VIRTUAL TABLE t USING hq({', '.join(args)})")
    except CLEAR as e:
        assert str(e)
        assert _catalog(db) == before  # nothing left behind
        return
    # Accepted: the table works and is consistent.
    dim, books = db.execute("SELECT dim, books FROM hqdb_tables WHERE name = 't'").fetchone()
    db.execute("INSERT INTO t(code, qcode) VALUES (zeroblob(?), zeroblob(?))",
               (dim // 8, books * (1 if db.execute("SELECT codewords FROM hqdb_tables").fetchone()[0] <= 256 else 2)))
    rows = db.execute("SELECT rowid FROM t WHERE hq_match(t.code, zeroblob(?)) AND k = 3 AND mode = 'hamming'",
                      (dim // 8,)).fetchall()
    assert rows == [(1,)]
    assert check(db)["ok"]


@fuzz
@given(name=st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s))
def test_table_names_cannot_inject_sql(tmp_path_factory, name):
    db = _fresh(tmp_path_factory.mktemp("n") / "f.db")
    quoted = '"' + name.replace('"', '""') + '"'
    try:
        db.execute(f"CREATE VIRTUAL TABLE {quoted} USING hq(dim=16, books=0, title TEXT)")
    except apsw.SQLError as e:  # e.g. a name SQLite reserves ("sqlite_...")
        assert str(e)
        return
    db.execute(f"INSERT INTO {quoted}(code, title) VALUES (x'0102', ?)", (name,))
    got = db.execute(f"SELECT title FROM {quoted} WHERE hq_match({quoted}.code, x'0102') AND k = 1").fetchall()
    assert got == [(name,)]
    assert check(db)["ok"]
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert names >= {name + "_rows", name + "_chunks", "hqdb_tables"}
    db.execute(f"DROP TABLE {quoted}")
    assert db.execute("SELECT count(*) FROM hqdb_tables").fetchone() == (0,)


@pytest.fixture(scope="module")
def raw_db(tmp_path_factory):
    db = hqdb.connect(tmp_path_factory.mktemp("r") / "raw.db")
    random_table(db, n=300, dim=64, books=4, codewords=16)
    return db


_VALUES = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=40),
    st.integers(min_value=-2**63, max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=0, max_size=80).map(
        lambda xs: np.asarray(xs, np.float32).tobytes()),
)


@fuzz
@given(q=_VALUES, k=st.one_of(st.integers(-5, 10**12), st.floats(allow_nan=True), st.text(max_size=5)),
       c=st.one_of(st.none(), st.integers(-5, 10**12)), mode=st.sampled_from([None, "hamming", "aqd", "two_stage", "x", ""]))
def test_query_values(raw_db, q, k, c, mode):
    sql = "SELECT rowid, distance FROM t WHERE hq_match(t.code, ?) AND k = ?"
    params = [q, k]
    if c is not None:
        sql += " AND candidates = ?"
        params.append(c)
    if mode is not None:
        sql += " AND mode = ?"
        params.append(mode)
    try:
        rows = raw_db.execute(sql, params).fetchall()
    except CLEAR as e:
        assert str(e)
        return
    assert len(rows) == min(int(k), 300)
    assert all(np.isfinite(d) for _, d in rows)


@fuzz
@given(code=_VALUES, qcode=_VALUES, rowid=st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.text(max_size=4)))
def test_inserted_values(raw_db, code, qcode, rowid):
    before = raw_db.execute("SELECT count(*) FROM t").fetchone()[0]
    try:
        raw_db.execute("INSERT INTO t(rowid, code, qcode) VALUES (?, ?, ?)", (rowid, code, qcode))
    except CLEAR as e:
        assert str(e)
        assert raw_db.execute("SELECT count(*) FROM t").fetchone()[0] == before
        return
    (new,) = raw_db.execute("SELECT max(rowid) FROM t" if rowid is None else "SELECT ?", (rowid,) if rowid is not None else ()).fetchone()
    raw_db.execute("DELETE FROM t WHERE rowid = ?", (new,))
    assert raw_db.execute("SELECT count(*) FROM t").fetchone()[0] == before
    assert check(raw_db)["ok"]


@fuzz
@given(blob=st.one_of(_VALUES, st.builds(lambda n, x: np.full(n, x, np.float32).tobytes(),
                                            st.sampled_from([4 * 16 * 64, 4 * 16 * 64 - 1, 4 * 16 * 64 + 1]),
                                            st.floats(width=32, allow_nan=True, allow_infinity=True))))
def test_codebook_blobs(raw_db, blob):
    before = raw_db.execute("SELECT hq_codebooks('t')").fetchone()
    try:
        raw_db.execute("SELECT hq_set_codebooks('t', ?)", (blob,))
    except CLEAR as e:
        assert str(e)
        assert raw_db.execute("SELECT hq_codebooks('t')").fetchone() == before
        return
    cb = np.frombuffer(raw_db.execute("SELECT hq_codebooks('t')").fetchone()[0], "<f4")
    assert cb.size == 4 * 16 * 64 and np.isfinite(cb).all()
    raw_db.execute("SELECT hq_set_codebooks('t', ?)", before)


@pytest.fixture(scope="module")
def model_db(tmp_path_factory):
    pytest.importorskip("torch")
    from hqdb import datasets

    db = hqdb.connect(tmp_path_factory.mktemp("m") / "model.db")
    pairs = datasets.synthetic_pairs(200, seed=1)
    hqdb.save_model(db, "m", hqdb.train(pairs, bits=16, books=2, codewords=8, seed=0, progress=False, epochs=1))
    db.execute("CREATE VIRTUAL TABLE docs USING hq(model='m', title TEXT)")
    return db


@fuzz
@given(image=_VALUES, text=_VALUES)
def test_inserted_features(model_db, image, text):
    db = model_db
    before = db.execute("SELECT count(*) FROM docs").fetchone()[0]
    try:
        with db.transaction():
            db.execute("INSERT INTO docs(image, text) VALUES (?, ?)", (image, text))
    except CLEAR as e:
        assert str(e)
        assert db.execute("SELECT count(*) FROM docs").fetchone()[0] == before
        return
    assert db.execute("SELECT count(*) FROM docs").fetchone()[0] == before + 1
    assert check(db)["ok"]


_MUTATIONS = st.one_of(
    st.tuples(st.just("dtype"), st.sampled_from(["float64", "object", "", "float32", "uint16", "<f4"])),
    st.tuples(st.just("shape"), st.one_of(
        st.lists(st.integers(-2, 2**62), max_size=10).map(json.dumps),
        st.sampled_from(["", "[", "null", "{}", "[1.5]", "[true]", "[" * 5000 + "]" * 5000, "[4294967296, 4294967296]"]))),
    st.tuples(st.just("data"), st.sampled_from(["truncate", "extend", "text", "null", "nan"])),
    st.tuples(st.just("config"), st.one_of(
        st.sampled_from(["", "[]", "null", "{", "[" * 5000 + "]" * 5000, '{"bits": 1e300}']),
        st.dictionaries(st.sampled_from(["bits", "books", "codewords", "modalities", "towers", "featurizers", "method"]),
                        st.one_of(st.integers(-10, 10**9), st.text(max_size=5), st.none(), st.lists(st.integers(), max_size=3)),
                        max_size=4).map(json.dumps))),
)


@fuzz
@given(mutation=_MUTATIONS, which=st.integers(0, 50))
def test_model_rows(model_db, mutation, which):
    db = model_db
    field, value = mutation
    db.execute("PRAGMA ignore_check_constraints = ON")  # a hostile file need not obey our CHECKs
    db.execute("SAVEPOINT fuzz")
    try:
        if field == "config":
            db.execute("UPDATE hqdb_models SET config = ? WHERE name = 'm'", (value,))
        else:
            tensors = [r[0] for r in db.execute("SELECT rowid FROM hqdb_model_tensors WHERE model = 'm' ORDER BY rowid")]
            target = tensors[which % len(tensors)]
            if field == "data":
                expr = {"truncate": "substr(data, 1, length(data) - 1)", "extend": "data || x'00'",
                        "text": "'abc'", "null": "zeroblob(0)", "nan": "x'0000c07f' || substr(data, 5)"}[value]
                db.execute(f"UPDATE hqdb_model_tensors SET data = {expr} WHERE rowid = ?", (target,))
            else:
                db.execute(f"UPDATE hqdb_model_tensors SET {field} = ? WHERE rowid = ?", (value, target))
        hqdb.list_models(db)  # listing never fails
        try:
            hqdb.load_model(db, "m")
        except hqdb.ModelError as e:
            assert str(e)
        # A table bound to a broken model fails with a clear error on use, and check says why.
        try:
            db.execute("SELECT rowid FROM docs WHERE hq_match(docs.text, hq_query('image', ?)) AND k = 1",
                       (np.zeros(128, np.float32).tobytes(),)).fetchall()
        except CLEAR as e:
            assert str(e)
        check(db)
    finally:
        db.execute("ROLLBACK TO fuzz")
        db.execute("RELEASE fuzz")
        db.execute("PRAGMA ignore_check_constraints = OFF")
    db.hq.tables.clear()  # forget the model this connection may have loaded from the bad rows
    hqdb.load_model(db, "m")


@fuzz
@given(arrays=st.dictionaries(
    st.sampled_from(["image", "text", "labels", "text_tfidf", "other"]),
    st.one_of(
        st.builds(lambda shape, fill: np.full(shape, fill, np.float32),
                  st.tuples(st.integers(0, 6), st.integers(0, 5)), st.floats(allow_nan=True, allow_infinity=True, width=32)),
        st.builds(lambda n, hi: np.arange(n, dtype=np.int64) % max(hi, 1) - (hi < 0), st.integers(0, 6),
                  st.sampled_from([-1, 1, 3, 2**40])),
        st.builds(lambda n: np.array(["a b"] * n), st.integers(0, 6)),
        st.builds(lambda s: np.zeros(s, np.uint8), st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3))),
    ), max_size=4))
def test_training_npz_files(tmp_path_factory, arrays):
    pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("z") / "d.npz"
    np.savez(path, **arrays)
    try:
        hqdb.train(str(path), bits=8, books=1, codewords=2, epochs=1, progress=False)
    except CLEAR as e:
        assert str(e)


def test_no_code_runs_from_a_database_file(tmp_path):
    """Nothing in hqdb can execute code from data: no pickle/marshal/eval anywhere in the
    package, and a model row carrying a pickle payload is data, not a program."""
    import ast
    import pathlib
    import pickle

    banned_modules = {"pickle", "cPickle", "dill", "marshal", "shelve", "joblib", "cloudpickle"}
    pkg = pathlib.Path(hqdb.__file__).parent
    for path in pkg.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & banned_modules, path
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in banned_modules, path
            elif isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                if isinstance(f, ast.Name):  # (a method such as torch's Module.eval() is fine)
                    assert name not in {"eval", "exec", "__import__"}, (path, node.lineno)
                if name == "load" and isinstance(f, ast.Attribute) and getattr(f.value, "id", "") == "torch":
                    # Only the restricted unpickler (tensors and containers, no callables), and
                    # only for a weights file the user names (image backbones), never a BLOB.
                    safe = any(kw.arg == "weights_only" and getattr(kw.value, "value", None) is True
                               for kw in node.keywords)
                    assert safe, f"torch.load without weights_only=True in {path}:{node.lineno}"
                for kw in node.keywords:
                    assert not (kw.arg == "allow_pickle" and getattr(kw.value, "value", False) is True), path

    class Boom:  # unpickling this would create the marker file
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    db = hqdb.connect(tmp_path / "evil.db")
    payload = pickle.dumps(Boom())
    db.execute("PRAGMA ignore_check_constraints = ON")
    db.execute("INSERT INTO hqdb_models(name, config) VALUES ('evil', ?)", (payload,))
    db.execute("INSERT INTO hqdb_model_tensors(model, name, dtype, shape, data) VALUES ('evil', 'codebooks', 'float32', ?, ?)",
               (payload, payload))
    assert [m["name"] for m in hqdb.list_models(db)] == ["evil"]
    with pytest.raises(hqdb.ModelError):
        hqdb.load_model(db, "evil")
    with pytest.raises(apsw.SQLError):
        db.execute("CREATE VIRTUAL TABLE docs USING hq(model='evil')")
    assert not (tmp_path / "pwned").exists()
