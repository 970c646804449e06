"""Keyword index (FTS5) and hybrid search (reciprocal-rank fusion) on collections: the index
follows every write path and rollback, user text never reaches MATCH as syntax, and the fused
ranking is exactly RRF of the two lists, ties by rowid, filtered by ``where``."""

from __future__ import annotations

import re

import numpy as np
import pytest

import apsw
import hqdb

WORDS = ["red", "blue", "green", "fox", "hen", "tree", "castle", "hill", "river", "stone"]


def title_of(i: int) -> str:
    rng = np.random.default_rng(1000 + i)
    return " ".join(rng.choice(WORDS, size=3, replace=False))


@pytest.fixture
def docs(db):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 32)).astype(np.float32)
    c = db.create_collection(
        "docs", dim=32, books=2, codewords=16, rerank="int8", columns={"title": str, "n": int}, fts="title"
    )
    c.fit(x)
    c.insert_all([{"vector": x[i], "title": title_of(i), "n": i} for i in range(300)])
    c.x = x  # the vectors, for the tests' own queries
    return c


def words_of(text) -> set[str]:
    return set(re.findall(r"\w+", text or ""))


def keyword_rows(coll, word: str) -> set[int]:
    return {h.rowid for h in coll.search(keywords=word, k=10_000)}


def truth(coll, word: str) -> set[int]:
    return {r["rowid"] for r in coll if word in words_of(r["title"])}


def assert_index_true(coll):
    for w in WORDS + ["zebra", "new"]:
        assert keyword_rows(coll, w) == truth(coll, w), w
    fts = hqdb.engine.fts.fts_name(coll.name)
    coll.db.execute(f'INSERT INTO "{fts}"("{fts}") VALUES (\'integrity-check\')')


# ---------------------------------------------------------------- the index follows every write
def test_index_follows_every_write_path(db, docs):
    assert docs.keyword_columns == ["title"]
    assert_index_true(docs)
    docs.insert({"vector": docs.x[0], "title": "zebra new", "n": 1000})
    docs.update(5, title="zebra castle")
    docs.update(6, n=7)  # a column the index does not cover
    docs.update(7, vector=docs.x[8])  # new codes, same text
    docs.upsert({"rowid": 8, "title": "new hill"})
    docs.delete([9, 10])
    docs.delete_where("n BETWEEN ? AND ?", [20, 29])
    assert_index_true(docs)
    # SQL on the table, and the bulk functions
    db.execute("INSERT INTO docs(vector, title, n) VALUES (?, 'zebra zebra', 2000)", (docs.x[1].tobytes(),))
    db.execute("UPDATE docs SET title = 'new river' WHERE n = 2000")
    db.execute("UPDATE docs SET rowid = 5000 WHERE rowid = 11")  # a rowid change moves its words
    db.execute("DELETE FROM docs WHERE rowid IN (12, 13)")
    hqdb.insert_vectors(db, "docs", docs.x[:2], metadata={"title": ["zebra fox", None], "n": [1, 2]})
    hqdb.delete_rows(db, "docs", [14, 15])
    db.execute("INSERT OR REPLACE INTO docs(rowid, vector, title) VALUES (16, ?, 'zebra')", (docs.x[2].tobytes(),))
    assert_index_true(docs)
    assert 5000 in keyword_rows(docs, title_of(10).split()[0]) and 11 not in truth(docs, "fox") | truth(docs, "red")
    db.execute("SELECT hq_rebuild('docs')")  # rewrites every row's code location, not its text
    assert hqdb.check.check_table(db, "docs") == []
    assert_index_true(docs)


def test_rollback_undoes_the_index(db, docs):
    before = {w: keyword_rows(docs, w) for w in WORDS}
    with pytest.raises(RuntimeError), db.transaction():
        docs.insert({"vector": docs.x[0], "title": "zebra", "n": 1})
        docs.update(1, title="zebra")
        docs.delete(2)
        db.execute("DELETE FROM docs WHERE rowid = 3")
        raise RuntimeError("undo")
    assert keyword_rows(docs, "zebra") == set()
    assert {w: keyword_rows(docs, w) for w in WORDS} == before
    with db.transaction():  # a savepoint inside a transaction: only its block is undone
        docs.update(4, title="zebra one")
        with pytest.raises(RuntimeError), db.transaction():
            docs.update(5, title="zebra two")
            raise RuntimeError
    assert keyword_rows(docs, "zebra") == {4}
    # an insert_all that fails half-way adds nothing, to the rows or to the index
    with pytest.raises(hqdb.CollectionError, match="expected 32 floats"):
        docs.insert_all([{"vector": docs.x[0], "title": "zebra new"}, {"vector": [1.0], "title": "zebra"}])
    assert keyword_rows(docs, "new") == set() and keyword_rows(docs, "zebra") == {4}
    assert_index_true(docs)


def test_rename_and_drop_take_the_index_along(db, docs):
    db.execute("ALTER TABLE docs RENAME TO papers")
    papers = db.collection("papers")
    assert papers.keyword_columns == ["title"]
    papers.insert({"vector": docs.x[0], "title": "zebra"})
    assert keyword_rows(papers, "zebra") == truth(papers, "zebra") != set()
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    assert "papers_fts" in names and not any(n.startswith("docs") for n in names)
    # the old name is free: a new collection there gets its own index
    again = db.create_collection("docs", dim=32, books=0, columns={"title": str}, fts="title")
    assert again.search(keywords="zebra") == []
    db.drop_collection("papers")
    db.execute("DROP TABLE docs")  # plain SQL drops the index too
    assert not [r for r in db.execute("SELECT name FROM sqlite_master WHERE name LIKE '%fts%'")]


def test_enable_disable_on_existing_rows(db):
    c = db.create_collection("c", dim=16, books=0, columns={"title": str, "body": str, "n": int})
    rng = np.random.default_rng(1)
    c.insert_all([{"vector": rng.standard_normal(16), "title": title_of(i), "body": "body text"} for i in range(40)])
    assert c.keyword_columns is None
    with pytest.raises(hqdb.CollectionError, match="need a keyword index.*enable_fts"):
        c.search(keywords="red")
    with pytest.raises(hqdb.CollectionError, match="column 'n' is INTEGER; a keyword index needs TEXT"):
        c.enable_fts("n")
    with pytest.raises(hqdb.CollectionError, match=r"no column 'nope' \(columns: \['title', 'body', 'n'\]\)"):
        c.enable_fts(["title", "nope"])
    with pytest.raises(hqdb.CollectionError, match="tokenize must name"):
        c.enable_fts("title", tokenize="unicode61'); DROP TABLE c; --")
    assert c.keyword_columns is None and len(c) == 40
    c.enable_fts(["TITLE", "body"], tokenize="porter unicode61")
    assert c.keyword_columns == ["title", "body"]
    assert keyword_rows(c, "red") == truth(c, "red") != set()
    assert len(c.search(keywords="bodies", k=100)) == 40  # porter: bodies ~ body
    with pytest.raises(hqdb.CollectionError, match="already has a keyword index"):
        c.enable_fts("title")
    assert c.disable_fts() is True and c.keyword_columns is None and c.disable_fts() is False
    with pytest.raises(hqdb.CollectionError, match="no column 'nope'"):
        db.create_collection("d", dim=16, columns={"title": str}, fts="nope")
    assert "d" not in db.collections()  # the table and its index, or neither


# ---------------------------------------------------------------- user text is never FTS5 syntax
@pytest.mark.parametrize(
    "text",
    [
        '"a" OR',
        "NEAR(",
        "NEAR(red fox, 2)",
        "title:red",
        "red*",
        "^red",
        "red AND",
        "(red",
        'red"',
        "'; DROP TABLE docs; --",
        "-red",
        "+",
        "",
        "   ",
        "OR",
        "red OR OR fox",
        "\x00red",
        "ｒｅｄ",
    ],
)
def test_keywords_are_words_not_syntax(db, docs, text):
    hits = docs.search(keywords=text, k=1000)
    want = set(re.findall(r"\w+", text))
    for h in hits:  # every hit holds one of the text's words (FTS5's unicode61 folds case)
        assert {w.lower() for w in want} & {w.lower() for w in words_of(h.title)}
    expect = set().union(*(truth(docs, w) for w in want)) if want else set()
    assert {h.rowid for h in hits} == expect
    assert len(docs) == 300  # nothing ran but the search


# ---------------------------------------------------------------- fusion
def rrf(lists, k0, k):
    score = {}
    for lst in lists:
        for rank, r in enumerate(lst, 1):
            score[r] = score.get(r, 0.0) + 1.0 / (k0 + rank)
    best = sorted(score, key=lambda r: (-score[r], r))[:k]
    return best, [-score[r] for r in best]


@pytest.mark.parametrize("k0", [60, 0, 5.5])
def test_hybrid_is_rrf_of_the_two_lists(db, docs, k0):
    q = docs.x[17] + 0.1
    for k, depth in ((10, None), (7, 20), (300, 300)):
        d = max(100, 10 * k) if depth is None else depth
        codes = [h.rowid for h in docs.search(vector=q, k=d)]
        words = [h.rowid for h in docs.search(keywords="castle hill", k=d)]
        hits = docs.search(vector=q, keywords="castle hill", hybrid=True, k=k, depth=depth, k0=k0)
        want, scores = rrf([codes, words], k0, k)
        assert hits.rowids.tolist() == want
        assert hits.distances.tolist() == pytest.approx(scores, rel=0, abs=1e-15)
        by_code = {h.rowid: h.hamming for h in docs.search(vector=q, k=d)}
        assert [h.hamming for h in hits] == [by_code.get(r) for r in want]  # None: found by keywords alone
        assert [h.title for h in hits] == [docs.get(r)["title"] for r in want]


def test_ties_go_to_the_smaller_rowid(db):
    c = db.create_collection("t", dim=16, books=0, columns={"title": str}, fts="title")
    v = np.ones(16, np.float32)
    # identical codes and identical text: every list ties, so the fused order is the rowid order
    c.insert_all([{"rowid": r, "vector": v, "title": "same words"} for r in (9, 3, 7, 1, 5)])
    assert c.search(keywords="same", k=5).rowids.tolist() == [1, 3, 5, 7, 9]
    hits = c.search(vector=v, keywords="same", hybrid=True, k=5)
    assert hits.rowids.tolist() == [1, 3, 5, 7, 9]
    again = c.search(vector=v, keywords="same", hybrid=True, k=5)
    assert hits == again


def test_where_filters_both_lists(db, docs):
    q = docs.x[3]
    where, args = "n % 3 = ? AND title NOT LIKE ?", [1, "%green%"]
    hits = docs.search(vector=q, keywords="red fox", hybrid=True, k=50, where=where, where_args=args)
    assert len(hits) == 50
    assert all(h.n % 3 == 1 and "green" not in h.title for h in hits)
    codes = [h.rowid for h in docs.search(vector=q, k=500, where=where, where_args=args)]
    words = [h.rowid for h in docs.search(keywords="red fox", k=500, where=where, where_args=args)]
    assert all(docs.get(r)["n"] % 3 == 1 for r in words) and words
    assert hits.rowids.tolist() == rrf([codes, words], 60, 50)[0]
    with pytest.raises(hqdb.CollectionError, match="has 2 '\\?' but 1 where_args"):
        docs.search(keywords="red", where=where, where_args=[1])


def test_search_many_matches_search(db, docs):
    qs = docs.x[:5] * 0.9
    kws = ["red", "castle hill", "", "NEAR(", "fox hen"]
    many = docs.search_many(vector=qs, keywords=kws, hybrid=True, k=8)
    assert many == [docs.search(vector=q, keywords=w, hybrid=True, k=8) for q, w in zip(qs, kws)]
    assert docs.search_many(keywords=kws, k=8) == [docs.search(keywords=w, k=8) for w in kws]
    # no word at all: the fused list is the code list, re-scored
    assert many[2].rowids.tolist() == docs.search(vector=qs[2], k=8).rowids.tolist()
    with pytest.raises(hqdb.CollectionError, match="2 keywords for 5 queries"):
        docs.search_many(vector=qs, keywords=["a", "b"], hybrid=True)


def test_bad_hybrid_calls_are_named(db, docs):
    q = docs.x[0]
    cases = [
        (dict(vector=q, keywords="red"), "pass hybrid=True"),
        (dict(hybrid=True, keywords="red"), "hybrid=True fuses a code search with keywords"),
        (dict(vector=q, hybrid=True), "hybrid=True needs keywords"),
        (dict(vector=q, keywords="red", hybrid=True, k0=-1), "k0 must be a finite number >= 0"),
        (dict(vector=q, keywords="red", hybrid=True, k0=float("nan")), "k0 must be"),
        (dict(vector=q, keywords="red", hybrid=True, k=10, depth=5), "depth must be between 10"),
        (dict(keywords="red", k=0), "k must be between 1"),
        (dict(keywords="red", mode="hamming"), "candidates and mode apply to a code search"),
        (dict(keywords=b"red"), "keywords must be a str"),
        (dict(keywords="red", where_args=[1]), "where_args given without a where"),
        (dict(keywords="red", where="1; DROP TABLE docs"), "is not a condition"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(hqdb.CollectionError, match=msg):
            docs.search(**kwargs)
    assert len(docs) == 300 and docs.keyword_columns == ["title"]


def test_index_names_not_taken_from_others(db):
    db.execute("CREATE TABLE c_fts(x)")  # someone else's table holds the index's name
    c = db.create_collection("c", dim=16, books=0, columns={"title": str})
    with pytest.raises(hqdb.CollectionError, match="c_fts already exist"):
        c.enable_fts("title")
    assert db.execute("SELECT count(*) FROM c_fts").fetchone() == (0,) and c.keyword_columns is None
    db.drop_collection("c")  # the user's table survives
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'c_fts'").fetchone() == ("c_fts",)


# ---------------------------------------------------------------- a model with a text featurizer
def test_text_query_is_both_code_query_and_keywords(db):
    pytest.importorskip("torch")
    from hqdb import datasets

    pairs = datasets.synthetic_pairs(400, seed=5)
    model = hqdb.train(pairs, bits=32, books=2, codewords=16, seed=0, progress=False, epochs=3)
    hqdb.save_model(db, "m", model)
    photos = db.create_collection("photos", model="m", columns={"caption": str}, fts="caption")
    photos.insert_all(
        [
            {"image": pairs["image"][i], "text": str(pairs["text"][i]), "caption": str(pairs["text"][i])}
            for i in range(300)
        ]
    )
    word = str(pairs["text"][0]).split()[0]
    hits = photos.search(text=word, hybrid=True, k=10)
    codes = [h.rowid for h in photos.search(text=word, k=100)]
    words = [h.rowid for h in photos.search(keywords=word, k=100)]
    assert hits.rowids.tolist() == rrf([codes, words], 60, 10)[0]
    # features as the query: the keywords must be given
    with pytest.raises(hqdb.CollectionError, match="hybrid=True needs keywords"):
        photos.search(
            text=model.featurize("text", [word])[0]
            if hasattr(model, "featurize")
            else np.zeros(model.input_dim("text"), np.float32),
            hybrid=True,
        )
    feats = np.zeros(model.input_dim("image"), np.float32)
    mixed = photos.search(image=feats, keywords=word, hybrid=True, k=5)
    assert len(mixed) == 5
    # SQL on the table keeps the index too
    db.execute("DELETE FROM photos WHERE rowid = ?", (words[0],))
    assert words[0] not in photos.search(keywords=word, k=100).rowids.tolist()
    with pytest.raises(apsw.SQLError):
        db.execute(
            "SELECT * FROM photos_fts WHERE photos_fts MATCH 'NEAR('"
        ).fetchall()  # raw MATCH: the user's own SQL


# ---------------------------------------------------------------- SQL function and CLI
def test_hq_keywords_sql_function(db, docs):
    kw = db.execute("SELECT hq_keywords(?), hq_keywords('!!'), hq_keywords(NULL)", ('castle" OR NEAR(',)).fetchone()
    assert kw == ('"castle" OR "OR" OR "NEAR"', '""', '""')
    for text in ['castle" OR NEAR(', "!!", "red*", "title:red"]:
        rows = db.execute(
            "SELECT rowid FROM docs_fts WHERE docs_fts MATCH hq_keywords(?) ORDER BY rank, rowid", (text,)
        ).fetchall()
        assert [r[0] for r in rows] == docs.search(keywords=text, k=1000).rowids.tolist()
    with pytest.raises(apsw.SQLError, match="hq_keywords expects TEXT"):
        db.execute("SELECT hq_keywords(1)").fetchall()


def test_cli_search_hybrid(db_path, capsys):
    pytest.importorskip("torch")
    import json

    import hqdb.cli
    from hqdb import datasets

    pairs = datasets.synthetic_pairs(300, seed=6)
    with hqdb.connect(db_path) as db:
        hqdb.save_model(db, "m", hqdb.train(pairs, bits=32, books=2, codewords=16, seed=0, progress=False, epochs=2))
        c = db.create_collection("c", model="m", columns={"caption": str})
        c.insert_all({"image": pairs["image"][i], "caption": str(pairs["text"][i])} for i in range(200))
    argv = ["search", "--db", str(db_path), "--collection", "c", "--text", "castle tower", "-k", "4", "--hybrid"]
    assert hqdb.cli.main(argv) == 1
    assert "keywords need a keyword index: c.enable_fts" in capsys.readouterr().err
    with hqdb.connect(db_path) as db:
        db.collection("c").enable_fts("caption")
        want = db.collection("c").search(text="castle tower", hybrid=True, k=4)
    assert hqdb.cli.main([*argv, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [h["rowid"] for h in got] == want.rowids.tolist()
    assert [h["distance"] for h in got] == pytest.approx(want.distances.tolist())
    assert hqdb.cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and lines[1].split()[0] == str(want[0].rowid)


def test_keyword_hits_convert(db, docs):
    words = docs.search(keywords="castle", k=5)
    arr = words.to_numpy()
    assert arr["hamming"].dtype == object and arr["hamming"].tolist() == [None] * 5
    assert arr["rowid"].tolist() == words.rowids.tolist() and [d["hamming"] for d in words.to_dicts()] == [None] * 5
    fused = docs.search(vector=docs.x[0], keywords="castle", hybrid=True, k=50, depth=50)
    assert None in [h.hamming for h in fused] and fused.to_numpy()["hamming"].dtype == object
    codes_only = docs.search(vector=docs.x[0], keywords="", hybrid=True, k=5)  # no word: every hit has codes
    assert codes_only.to_numpy()["hamming"].dtype == np.int64
