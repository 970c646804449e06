"""A hostile database file (issue 13): someone sends ``downloaded.db``, a user runs
``hqdb.connect("downloaded.db")`` and searches. Whatever the file holds — a model whose tensors
do not fit each other, modality or column names that are not identifiers, catalog values out of
range, chunk rows that promise more than the file holds — opening, checking, searching and
writing either work or raise an :class:`hqdb.HqdbError`: never a crash, never a huge allocation.

Files are made hostile by editing them with plain SQL (as an attacker would), then opened in a
subprocess when a crash is possible, so a segfault fails the test instead of ending the run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import apsw
import hqdb
from hqdb.engine import options as options_mod
from hqdb.engine.check import check
from hqdb.engine.options import TableOptions
from hqdb.engine.storage import CodeStore
from hqdb.model import TrainedModel
from hqdb.model import model as model_mod

from conftest import random_table
from fuzz_hostile import hand_state, loosen, model_file

TESTS = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- helpers
PROBE = r"""
import json, sys
import numpy as np
import hqdb
path, statements = sys.argv[1], json.loads(sys.argv[2])
out = []
db = hqdb.connect(path)
for sql, params in statements:
    if isinstance(params, dict) and "f32" in params:
        params = (np.asarray(params["f32"], dtype=np.float32).tobytes(),)
    try:
        out.append(["ok", repr(db.execute(sql, params).fetchall())[:300]])
    except hqdb.HqdbError as e:
        out.append(["hqdb", type(e).__name__ + ": " + str(e)])
    except Exception as e:
        out.append(["other", type(e).__name__ + ": " + str(e)])
print(json.dumps(out))
"""


def probe(path, statements):
    """Run ``statements`` ([sql, params]) on a fresh connection in a subprocess: per statement
    ``("ok", rows)``, ``("hqdb", message)`` or ``("other", message)``. A crash fails the test."""
    p = subprocess.run([sys.executable, "-c", PROBE, str(path), json.dumps(statements)],
                       capture_output=True, text=True, cwd=TESTS, timeout=300)
    assert p.returncode == 0, f"the probe crashed (status {p.returncode}): {p.stderr[-2000:]}"
    return [tuple(r) for r in json.loads(p.stdout.strip().splitlines()[-1])]


IMAGE_QUERY = ("SELECT rowid FROM docs WHERE hq_match(docs.text, hq_query('image', ?)) AND k = 3",
               {"f32": [0.5] * 6})
TEXT_QUERY = ("SELECT rowid FROM docs WHERE hq_match(docs.image, hq_query('text', 'red apple')) AND k = 3", [])


def edit(path, *sql):
    """Edit the file with plain SQLite (no hqdb), its constraints dropped first: what a stranger
    can do to a file."""
    loosen(path)
    conn = apsw.Connection(str(path))
    for s in sql:
        if isinstance(s, tuple):
            conn.execute(*s)
        else:
            conn.execute(s)
    conn.close()


def _f32(a) -> bytes:
    return np.asarray(a, dtype="<f4").tobytes()


def add_hash_towers(path, dims):
    """Give model ``m`` hash towers taking ``dims[m]`` inputs (config + tensors)."""
    conn = apsw.Connection(str(path))
    (raw,) = conn.execute("SELECT config FROM hqdb_models WHERE name = 'm'").fetchone()
    config = json.loads(raw)
    config["hash_towers"] = {m: {"input_dim": d, "layers": [16], "activation": "relu"} for m, d in dims.items()}
    conn.execute("UPDATE hqdb_models SET config = ? WHERE name = 'm'", (json.dumps(config),))
    for m, d in dims.items():
        for name, shape, value in ((f"hash.{m}.input_mean", (d,), 0.0), (f"hash.{m}.input_scale", (d,), 1.0),
                                   (f"hash.{m}.layer0.weight", (16, d), 1e6), (f"hash.{m}.layer0.bias", (16,), 0.0)):
            conn.execute("INSERT INTO hqdb_model_tensors(model, name, dtype, shape, data) VALUES ('m', ?, 'float32', ?, ?)",
                         (name, json.dumps(list(shape)), _f32(np.full(shape, value))))
    conn.close()


# ----------------------------------------------------------------------------- 1: model shapes
def test_hash_tower_must_take_the_main_towers_input():
    config, tensors = hand_state()
    d_txt = config["towers"]["text"]["input_dim"]
    config["hash_towers"] = {"image": {"input_dim": 1, "layers": [16], "activation": "relu"},
                             "text": {"input_dim": d_txt, "layers": [16], "activation": "relu"}}
    for m, d in (("image", 1), ("text", d_txt)):
        tensors.update({f"hash.{m}.input_mean": np.zeros(d, np.float32), f"hash.{m}.input_scale": np.ones(d, np.float32),
                        f"hash.{m}.layer0.weight": np.ones((16, d), np.float32),
                        f"hash.{m}.layer0.bias": np.zeros(16, np.float32)})
    with pytest.raises(ValueError, match=r"hash tower 'image'.*input_dim is 1.*tower takes 6"):
        TrainedModel.from_state(config, tensors)
    config["hash_towers"]["image"]["input_dim"] = 6
    tensors.update({"hash.image.input_mean": np.zeros(6, np.float32), "hash.image.input_scale": np.ones(6, np.float32),
                    "hash.image.layer0.weight": np.ones((16, 6), np.float32)})
    TrainedModel.from_state(config, tensors)  # consistent: accepted


def test_file_with_a_hash_tower_of_another_input_size_is_refused_and_checked(tmp_path):
    """Issue 13 item 1: a hash tower declared for 1 input, fed 6 by encode(): the dense kernel read
    past its weights (SIGSEGV or garbage) while hq_check said ok."""
    path = tmp_path / "downloaded.db"
    model_file(path)
    add_hash_towers(path, {"image": 1, "text": hand_state()[0]["towers"]["text"]["input_dim"]})
    check_out, image_q, text_q = probe(path, [("SELECT hq_check()", []), IMAGE_QUERY, TEXT_QUERY])
    assert check_out[0] == "ok" and "hash tower 'image'" in check_out[1] and "'ok'" not in check_out[1], check_out
    assert image_q[0] == "hqdb" and "hash tower 'image'" in image_q[1], image_q
    assert text_q[0] == "hqdb", text_q
    # The raw table in the same file is unaffected.
    (raw,) = probe(path, [("SELECT count(*) FROM t", [])])
    assert raw == ("ok", "[(50,)]")


@pytest.mark.parametrize("mutate, message", [
    # input standardisation, towers, codebooks, featurizer: every consumer of every tensor
    (lambda c, t: c["towers"]["image"].update(input_dim=5), "image.input_mean"),
    (lambda c, t: c["featurizers"].update(image=c["featurizers"]["text"]), "featurizer makes"),
    (lambda c, t: c["towers"]["text"].update(input_dim=3), "featurizer makes"),
    (lambda c, t: c.update(codewords=9), "'codebooks' has shape"),
    (lambda c, t: c.update(codewords=70000), "codewords"),
    (lambda c, t: c.update(aq_iters=10**9), "aq_iters"),
    (lambda c, t: c.update(aq_iters=-1), "aq_iters"),
    (lambda c, t: c.update(books=10**6), "books"),
    (lambda c, t: c["towers"]["image"].update(layers=[7, 16, 10**12]), "last layer"),
    (lambda c, t: c["towers"]["image"].update(input_dim=True), "input_dim"),
    (lambda c, t: c["towers"]["image"].update(output="exp"), "output"),
    (lambda c, t: c.update(hash_towers=[]), "hash_towers"),
])
def test_model_state_is_checked_against_every_consumer(mutate, message):
    config, tensors = hand_state()
    mutate(config, tensors)
    with pytest.raises(ValueError, match=message):
        TrainedModel.from_state(config, tensors)


def test_dense_layers_refuse_mismatched_shapes_before_the_kernel():
    """Belt and braces: even a model object built without from_state() never hands the numba
    kernel a weight matrix of another input size."""
    config, tensors = hand_state()
    model = TrainedModel.from_state(config, tensors)
    wt, b = model._layers["image"][0]
    model._layers["image"][0] = (wt[:2].copy(), b)
    with pytest.raises(ValueError, match="layer 0"):
        model.encode("image", np.zeros((1, 6), np.float32))


def test_weights_that_overflow_float32_are_refused_not_encoded_to_nan():
    """Found by the fuzzer: finite float32 weights whose folded input standardisation overflows
    (weight 1e30 x scale 1e30) gave inf/NaN codes; pack_bits then raised a bare ValueError."""
    config, tensors = hand_state()
    tensors["image.input_scale"] = np.full(6, 1e30, np.float32)
    tensors["image.layer0.weight"] = np.full((7, 6), 1e30, np.float32)
    with pytest.raises(ValueError, match="overflow float32"):
        TrainedModel.from_state(config, tensors)
    config, tensors = hand_state()
    tensors["image.layer0.weight"] = np.full((7, 6), 1e20, np.float32)  # finite, folds fine,
    tensors["image.layer1.weight"] = np.full((16, 7), 1e20, np.float32)  # but 1e20 x 1e20 is not
    model = TrainedModel.from_state(config, tensors)
    with pytest.raises(ValueError, match="overflows float32"):
        model.encode("image", np.ones((1, 6), np.float32))


def test_overflowing_model_in_a_file_is_an_hqdb_error(tmp_path):
    path = tmp_path / "downloaded.db"
    model_file(path, raw=False)
    edit(path, ("UPDATE hqdb_model_tensors SET data = ? WHERE model = 'm' AND name = 'image.layer0.weight'",
                (np.full((7, 6), 1e20, "<f4").tobytes(),)),
         ("UPDATE hqdb_model_tensors SET data = ? WHERE model = 'm' AND name = 'image.layer1.weight'",
          (np.full((16, 7), 1e20, "<f4").tobytes(),)))
    out = probe(path, [IMAGE_QUERY, ("INSERT INTO docs(image, text) VALUES (?, 'blue sky')", {"f32": [1.0] * 6})])
    assert [k for k, _ in out] == ["hqdb", "hqdb"] and all("overflows float32" in m for _, m in out), out


def test_missing_shadow_tables_are_problems_of_the_check(tmp_path):
    """Found by the fuzzer: with t_rows dropped, PRAGMA integrity_check and hq_rebuild failed with
    SQLite's 'no such table' instead of naming the damage."""
    path = tmp_path / "downloaded.db"
    db = hqdb.connect(path)
    random_table(db, n=20, dim=64, books=2, codewords=16, chunk_size=16)
    db.close()
    edit(path, "DROP TABLE t_rows")
    db = hqdb.connect(path)
    assert check(db)["tables"]["t"] == ["hq table t: shadow table t_rows is missing"]
    (text,) = db.execute("SELECT hq_check('t')").fetchone()
    assert "t_rows is missing" in text
    with pytest.raises(hqdb.CorruptTableError, match="t_rows"):
        db.execute("SELECT hq_rebuild('t')")
    db.close()


# ----------------------------------------------------------------------------- 2 + 6: names
BAD_MODALITIES = ["rowid", "ROWID", "oid", "_rowid_", "code", "qcode", "distance", "hamming", "k", "candidates",
                  "mode", "text\n", "te xt", 'te"xt', "te;xt", "te'xt", "", "1text", "t" * 200, "text_code"]


@pytest.mark.parametrize("name", BAD_MODALITIES)
def test_model_modality_names_are_identifiers(name):
    config, tensors = hand_state()
    config["modalities"] = ["image", name]
    config["towers"][name] = config["towers"].pop("text")
    config["featurizers"][name] = config["featurizers"].pop("text")
    for k in [k for k in tensors if k.startswith("text.")]:
        tensors[name + k[4:]] = tensors.pop(k)
    if name == "text_code":  # collides with the text modality's code column only when both exist
        config["modalities"] = ["image", "text", name]
        config["towers"]["text"] = config["towers"][name]
        config["featurizers"]["text"] = config["featurizers"][name]
        tensors.update({"text" + k[len(name):]: v for k, v in list(tensors.items()) if k.startswith(name + ".")})
    with pytest.raises(ValueError, match="modalit"):
        TrainedModel.from_state(config, tensors)


def test_modality_names_that_differ_only_in_case_collide():
    config, tensors = hand_state()
    config["modalities"] = ["image", "IMAGE"]
    config["towers"]["IMAGE"] = config["towers"].pop("text")
    config["featurizers"]["IMAGE"] = config["featurizers"].pop("text")
    for k in [k for k in tensors if k.startswith("text.")]:
        tensors["IMAGE" + k[4:]] = tensors.pop(k)
    with pytest.raises(ValueError, match="modalit"):
        TrainedModel.from_state(config, tensors)


def rename_modality(path, old, new):
    """Rename modality ``old`` of model ``m`` and table ``docs`` to ``new`` by plain SQL:
    model config and tensors, catalog options, shadow chunks table, locator columns."""
    conn = apsw.Connection(str(path))
    (raw,) = conn.execute("SELECT config FROM hqdb_models WHERE name = 'm'").fetchone()
    config = json.loads(raw)
    config["modalities"] = [new if m == old else m for m in config["modalities"]]
    for key in ("towers", "featurizers"):
        config[key][new] = config[key].pop(old)
    conn.execute("UPDATE hqdb_models SET config = ? WHERE name = 'm'", (json.dumps(config),))
    conn.execute("UPDATE hqdb_model_tensors SET name = ? || substr(name, ?) WHERE model = 'm' AND name LIKE ?",
                 (new, len(old) + 1, old + ".%"))
    (opts,) = conn.execute("SELECT options FROM hqdb_tables WHERE name = 'docs'").fetchone()
    opts = json.loads(opts)
    opts["modalities"] = [new if m == old else m for m in opts["modalities"]]
    conn.execute("UPDATE hqdb_tables SET options = ? WHERE name = 'docs'", (json.dumps(opts),))
    q = '"' + new.replace('"', '""') + '_chunks"'
    conn.execute(f"ALTER TABLE docs_{old}_chunks RENAME TO {q}")
    for suffix in ("chunk", "slot"):
        q = '"' + new.replace('"', '""') + "_" + suffix + '"'
        conn.execute(f"ALTER TABLE docs_rows RENAME COLUMN {old}_{suffix} TO {q}")
    conn.close()


def test_modality_named_rowid_cannot_shadow_the_rowid(tmp_path):
    """Issue 13 item 6: a modality named ``rowid`` would declare a hidden column ``rowid`` that
    shadows the real one (SELECT rowid gives NULL; DELETE WHERE rowid = 1 deletes nothing). The
    table is refused as corrupt; the rest of the file keeps working."""
    path = tmp_path / "downloaded.db"
    model_file(path)
    rename_modality(path, "image", "rowid")
    out = probe(path, [
        ("SELECT rowid FROM docs ORDER BY rowid LIMIT 2", []),
        ("DELETE FROM docs WHERE rowid = 1", []),
        ("SELECT hq_check()", []),
        ("SELECT rowid FROM t ORDER BY rowid LIMIT 2", []),
        ("DELETE FROM t WHERE rowid = 1", []),
        ("SELECT count(*), min(rowid) FROM t", []),
        ("SELECT hq_check('t')", []),
    ])
    assert out[0][0] == "hqdb" and "CorruptTableError" in out[0][1] and "modalit" in out[0][1], out[0]
    assert out[1][0] == "hqdb", out[1]
    assert out[2][0] == "ok" and "docs" in out[2][1] and "modalit" in out[2][1], out[2]
    assert out[3:] == [("ok", "[(1,), (2,)]"), ("ok", "[]"), ("ok", "[(49, 2)]"), ("ok", "[('ok',)]")]


@pytest.mark.parametrize("new", ["text\n", 'x"; DROP TABLE t; --', "text_code"])
def test_hostile_modality_names_in_the_catalog_are_refused(tmp_path, new):
    path = tmp_path / "downloaded.db"
    model_file(path, raw=False)
    rename_modality(path, "image", new)
    (out,) = probe(path, [TEXT_QUERY])
    assert out[0] == "hqdb" and "CorruptTableError" in out[1], out


def test_metadata_column_named_like_a_locator_is_refused():
    """A raw table's rows have columns chunk and slot; a model-bound one <m>_chunk, <m>_slot."""
    with pytest.raises(hqdb.OptionError, match="chunk"):
        options_mod.parse_args(("dim=64", "chunk TEXT"))
    with pytest.raises(hqdb.OptionError, match="slot"):
        options_mod.parse_args(("dim=64", "SLOT INTEGER"))
    with pytest.raises(hqdb.OptionError, match="image_chunk"):
        options_mod.parse_args(("model='m'", "image_chunk TEXT"),
                               lambda name: (16, 2, 8, ("image", "text"), "ip"))


def test_reserved_names_are_the_same_in_engine_and_model():
    assert model_mod.RESERVED_NAMES == options_mod.RESERVED


def test_no_dollar_anchored_patterns():
    """``$`` matches before a trailing newline: every pattern that validates a name is anchored
    with ``\\Z`` or used with fullmatch."""
    for mod in (options_mod, model_mod):
        for value in vars(mod).values():
            if hasattr(value, "pattern") and hasattr(value, "fullmatch"):
                assert not value.pattern.endswith("$"), (mod.__name__, value.pattern)
    assert options_mod.parse_args(("dim=64",)).dim == 64
    with pytest.raises(hqdb.OptionError):
        options_mod.parse_args(("dim=64", '"title\n" TEXT'))


# ----------------------------------------------------------------------------- 3 + 5: catalog
def _opts(**changes):
    doc = {"columns": [["year", "INTEGER", False]], "model": None, "modalities": [], "metric": "ip"}
    doc.update(changes)
    return json.dumps(doc)


HOSTILE_CATALOG = [
    ("dim", -8), ("dim", "64"), ("dim", 12), ("dim", 0), ("dim", 10**6), ("dim", 64.0), ("dim", None),
    ("books", -1), ("books", 65), ("books", "2"), ("codewords", 1), ("codewords", 70000), ("codewords", 2.5),
    ("chunk_size", 0), ("chunk_size", -16), ("chunk_size", 2**33), ("chunk_size", "16"),
    ("options", "{"), ("options", "[]"), ("options", "null"), ("options", "[" * 100000 + "]" * 100000),
    ("options", 7), ("options", b"\xff\xfe"),
    ("metric", _opts(metric="foo")), ("metric", _opts(metric=None)),
    ("columns", _opts(columns=[["year", "TEXT, shadow TEXT", False]])),
    ("columns", _opts(columns=[["year", "INTEGER PRIMARY KEY", False]])),
    ("columns", _opts(columns=[["ye ar", "INTEGER", False]])),
    ("columns", _opts(columns=[["year\n", "INTEGER", False]])),
    ("columns", _opts(columns=[["rowid", "INTEGER", False]])),
    ("columns", _opts(columns=[["chunk", "INTEGER", False]])),
    ("columns", _opts(columns=[["year", "INTEGER", False], ["YEAR", "TEXT", False]])),
    ("columns", _opts(columns=[["year", "INTEGER", True], ["b", "TEXT", True]])),
    ("columns", _opts(columns=[["year", "INTEGER", "yes"]])),
    ("columns", _opts(columns=[["year", "INTEGER"]])),
    ("columns", _opts(columns={"year": "INTEGER"})),
    ("columns", _opts(columns=[7])),
    ("modalities", _opts(modalities=["image"])),
    ("model", _opts(model=7)),
    ("model", _opts(model="m\n")),
]


@pytest.mark.parametrize("field, value", HOSTILE_CATALOG, ids=[f"{f}={str(v)[:30]!r}" for f, v in HOSTILE_CATALOG])
def test_catalog_values_are_validated_on_open(tmp_path, field, value):
    """Issue 13 items 3 and 5: every catalog field (and every field of the options JSON) is
    checked when a table is opened, with the ranges CREATE applies, as a CorruptTableError
    naming the table and the field."""
    path = tmp_path / "downloaded.db"
    db = hqdb.connect(path)
    random_table(db, n=50, dim=64, books=2, codewords=16, chunk_size=16, extra=", year INTEGER")
    db.close()
    column = field if field in ("dim", "books", "codewords", "chunk_size") else "options"
    edit(path, (f"UPDATE hqdb_tables SET {column} = ? WHERE name = 't'", (value,)))
    out = probe(path, [("SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 3", {"f32": [0.5] * 64}),
                       ("SELECT count(*) FROM t", []), ("SELECT hq_check()", [])])
    for kind, message in out[:2]:
        assert kind == "hqdb" and "CorruptTableError" in message, out
        assert "'t'" in message and f"field {field!r}" in message, out
    assert out[2][0] == "ok" and "hq table t" in out[2][1] and field in out[2][1], out[2]


def test_from_catalog_accepts_what_create_writes():
    o = options_mod.parse_args(("dim=64", "books=2", "codewords=300", "chunk_size=8", "metric='l2'",
                                '"select" TEXT UNIQUE', "y REAL"))
    assert TableOptions.from_catalog(o.dim, o.books, o.codewords, o.chunk_size, o.to_json()) == o


def test_code_cache_never_allocates_beyond_the_file(tmp_path, monkeypatch):
    """Issue 13 item 5: thousands of tiny chunk rows of a table declared with 65536-slot chunks of
    1024-bit codes made load() size its arrays from their count (tens of GB) before it read one."""
    path = tmp_path / "downloaded.db"
    db = hqdb.connect(path)
    db.execute("CREATE VIRTUAL TABLE t USING hq(dim=1024, books=64, codewords=65536, chunk_size=65536)")
    db.close()
    edit(path, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) "
               "INSERT INTO t_chunks(chunk, valid, rowids, codes, qcodes) SELECT i, x'', x'', x'', x'' FROM n")
    size = path.stat().st_size
    asked = []
    real = CodeStore._alloc

    def alloc(self, n_chunks):
        asked.append(n_chunks * self.cs * (1 + 8 + self.opts.code_bytes + self.opts.qcode_bytes))
        return real(self, n_chunks)

    monkeypatch.setattr(CodeStore, "_alloc", alloc)
    db = hqdb.connect(path)
    with pytest.raises(hqdb.CorruptTableError, match="wrong BLOB sizes"):
        db.execute("SELECT rowid FROM t WHERE hq_match(t.code, zeroblob(128)) AND k = 3 AND mode = 'hamming'")
    db.close()
    assert max(asked) <= 2 * size + (1 << 20), (max(asked), size)


def test_code_cache_still_loads_many_chunks(tmp_path):
    path = tmp_path / "ok.db"
    db = hqdb.connect(path)
    codes, _, _, rowids = random_table(db, n=700, dim=64, books=2, codewords=16, chunk_size=8)
    db.close()
    db = hqdb.connect(path)
    got = db.execute("SELECT rowid FROM t WHERE hq_match(t.code, ?) AND k = 1 AND mode = 'hamming'",
                     (codes[123].tobytes(),)).fetchall()
    assert got == [(int(rowids[123]),)]
    assert db.execute("SELECT count(*) FROM t").fetchone() == (700,)
    db.close()


def test_check_reports_a_table_it_cannot_read_as_a_problem_line(tmp_path):
    path = tmp_path / "downloaded.db"
    db = hqdb.connect(path)
    random_table(db, n=20, dim=64, books=2, codewords=16, chunk_size=16)
    random_table(db, name="u", n=20, dim=64, books=2, codewords=16, chunk_size=16)
    db.execute("UPDATE hqdb_tables SET options = '{' WHERE name = 'u'")
    report = check(db)
    assert not report["ok"] and report["tables"]["t"] == []
    assert any("options" in p for p in report["tables"]["u"]), report
    (text,) = db.execute("SELECT hq_check()").fetchone()
    assert "hq table u" in text and "options" in text
    db.close()


# ----------------------------------------------------------------------------- the fuzzer, small
def test_hostile_file_fuzzer_small_budget(tmp_path):
    """tests/fuzz_hostile.py at a small budget: every mutated file opens, checks, searches and
    takes writes with success or an HqdbError, in subprocesses, within the memory bound."""
    p = subprocess.run([sys.executable, str(TESTS / "fuzz_hostile.py"), "--cases", "60", "--batch", "30",
                        "--seed", "1", "--workdir", str(tmp_path), "--json"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["cases"] == 60 and summary["crashes"] == 0 and summary["escaped"] == 0, summary
    assert summary["max_rss_growth_mb"] <= 200, summary


def test_check_survives_a_table_name_that_is_not_utf8(tmp_path):
    """Found by the fuzzer: hq_check() failed with UnicodeDecodeError listing the catalog."""
    path = tmp_path / "downloaded.db"
    db = hqdb.connect(path)
    random_table(db, n=20, dim=64, books=2, codewords=16, chunk_size=16)
    random_table(db, name="u", n=20, dim=64, books=2, codewords=16, chunk_size=16)
    db.close()
    edit(path, "UPDATE hqdb_tables SET name = CAST(x'75ff' AS TEXT) WHERE name = 'u'")
    db = hqdb.connect(path)
    report = check(db)
    assert report["tables"]["t"] == [] and not report["ok"]
    assert any("not UTF-8" in p for ps in report["tables"].values() for p in ps), report
    assert db.execute("SELECT count(*) FROM t").fetchone() == (20,)
    db.close()
