"""hqdb.distributed on a real local Ray cluster (2 CPUs): sharded collections against one file
holding the same rows, actor restarts, distributed encoding resumed after a crash.

Skipped only where the ``distributed`` extra (Ray) is absent; the models are trained with torch."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("torch")

import hqdb  # noqa: E402
from hqdb.datasets import synthetic_pairs  # noqa: E402
from hqdb.distributed import ShardedCollection, ShardError, shard_of  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster for this module; workers import this checkout's hqdb."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data():
    return synthetic_pairs(1200, seed=3)


@pytest.fixture(scope="module")
def models(data):
    """A two-stage model (hq) and an AQD one (cq), small and quick."""
    small = {"epochs": 3, "bits": 32, "progress": False, "val_fraction": 0.0}
    return {
        "hq": hqdb.train(data, method="hq", books=4, codewords=16, **small),
        "cq": hqdb.train(data, method="cq", codewords=16, **small),
    }


def _items(data, ids):
    return [
        {
            "rowid": int(i),
            "image": data["image"][i],
            "text": str(data["text"][i]),
            "topic": int(data["labels"][i]),
            "n": f"item{i}",
        }
        for i in ids
    ]


def _reference(tmp_path, model, items, name="docs"):
    """One file holding every item with the same rowids: what the shards must reproduce."""
    db = hqdb.connect(str(tmp_path / "single.hqdb"))
    hqdb.save_model(db, "model", model)
    coll = db.create_collection(name, "model", {"topic": int, "n": str})
    coll.insert_all(items, progress=False)
    return db, coll


def _same(a, b):
    assert [h.to_dict() for h in a] == [h.to_dict() for h in b]


def test_shard_of_is_stable_and_spreads():
    # blake2b of the typed key: fixed values, whatever the process or PYTHONHASHSEED.
    assert [shard_of(i, 4) for i in range(8)] == [shard_of(i, 4) for i in range(8)]
    assert shard_of("castle", 7) == shard_of("castle", 7)
    assert shard_of(1, 1000) != shard_of("1", 1000) or shard_of(2, 1000) != shard_of("2", 1000)
    counts = np.bincount([shard_of(i, 4) for i in range(4000)], minlength=4)
    assert counts.min() > 850, counts  # about 1000 each
    with pytest.raises(hqdb.CollectionError):
        shard_of(None, 4)


@pytest.mark.parametrize("method", ["hq", "cq"])
def test_sharded_search_equals_one_file(cluster, tmp_path, data, models, method):
    model = models[method]
    items = _items(data, range(1, 1001))
    db, single = _reference(tmp_path, model, items)
    sc = ShardedCollection.create(tmp_path / "shards", "docs", model, shards=3, columns={"topic": int, "n": str})
    try:
        assert sc.insert_all(items) == list(range(1, 1001))
        assert len(sc) == 1000 and min(sc.counts()) > 250
        queries = data["image"][1000:1012]
        texts = [str(t) for t in data["text"][1000:1012]]
        for q in queries[:4]:
            # small candidate lists make the two-stage shortlist cut matter (ties in Hamming too)
            for kw in ({"k": 10}, {"k": 7, "candidates": 20}, {"k": 5, "candidates": 5}, {"k": 40, "mode": "hamming"}):
                _same(sc.search(image=q, **kw), single.search(image=q, **kw))
        _same(sc.search(text=texts[0], k=10), single.search(text=texts[0], k=10))
        for kw in ({"k": 10}, {"k": 8, "candidates": 30}):
            for a, b in zip(sc.search_many(image=queries, **kw), single.search_many(image=queries, **kw)):
                _same(a, b)
        where = {"where": "topic IN (?, ?) AND n != ?", "where_args": [1, 3, "item5"]}
        for a, b in zip(
            sc.search_many(text=texts, k=10, candidates=25, **where),
            single.search_many(text=texts, k=10, candidates=25, **where),
        ):
            _same(a, b)
            assert all(h.topic in (1, 3) for h in a)
        # bad input: the shard's own error, as one file raises it
        with pytest.raises(hqdb.CollectionError, match="where"):
            sc.search(image=queries[0], where="no_such_column = 1")
        with pytest.raises(hqdb.CollectionError):
            sc.search(image=queries[0][:5])
        with pytest.raises(hqdb.CollectionError, match="already exists"):
            sc.insert(items[0])
        assert len(sc) == 1000
    finally:
        sc.close()
        db.close()


def test_sharded_inserts_by_key_and_reopen(cluster, tmp_path, data, models):
    model = models["hq"]
    sc = ShardedCollection.create(tmp_path, "keyed", model, shards=2, columns={"n": str, "topic": int}, key="n")
    try:
        items = [{k: v for k, v in it.items() if k != "rowid"} for it in _items(data, range(300))]
        ids = sc.insert_all(items)
        assert ids == list(range(1, 301))
        for it, r in zip(items[:20], ids):
            shard = shard_of(it["n"], 2)
            with hqdb.connect(sc.paths[shard], readonly=True) as one:
                assert one.collection("keyed").get(r)["n"] == it["n"]
        # a duplicate key in one shard undoes the other shard's part
        dup = [{"n": "fresh-a", "image": data["image"][0]}, {"n": "fresh-b", "image": data["image"][1]}, items[5]]
        with pytest.raises(hqdb.CollectionError):
            sc.insert_all(dup)
        assert len(sc) == 300
        assert sc.get(7)["n"] == items[6]["n"]
        with pytest.raises(hqdb.NotFoundError):
            sc.get(10_000)
    finally:
        sc.close()
    again = ShardedCollection(tmp_path, "keyed")
    try:
        assert len(again) == 300 and again.insert({"n": "next", "image": data["image"][2]}) == 301
        assert again.delete([301, 1]) == 2 and len(again) == 299
    finally:
        again.close()
    with pytest.raises(ShardError, match="no sharded collection"):
        ShardedCollection(tmp_path, "missing")


def test_killed_actor_is_restarted_and_the_query_retried(cluster, tmp_path, data, models):
    model = models["hq"]
    items = _items(data, range(1, 401))
    db, single = _reference(tmp_path, model, items)
    sc = ShardedCollection.create(tmp_path / "s", "docs", model, shards=2, columns={"topic": int, "n": str})
    try:
        sc.insert_all(items)
        q = data["image"][500]
        expected = single.search(image=q, k=10)
        _same(sc.search(image=q, k=10), expected)
        victim = sc.actor(1)
        before = ray.get(victim.pid.remote())
        ray.kill(victim, no_restart=False)  # the process dies; Ray restarts it from its file
        _same(sc.search(image=q, k=10), expected)  # the client sees no error
        assert sc.retries == 1
        assert ray.get(victim.pid.remote()) != before
        # mid-use: kill while a batch is in flight (one SQL statement per query with where=: slow
        # enough for the kill to land during the call)
        queries = np.concatenate([data["image"][500:600]] * 10)
        where = {"where": "topic >= ?", "where_args": [0]}
        pid = ray.get(victim.pid.remote())
        result = {}
        worker = threading.Thread(target=lambda: result.update(hits=sc.search_many(image=queries, k=5, **where)))
        worker.start()
        time.sleep(0.3)
        ray.kill(victim, no_restart=False)
        worker.join(120)
        assert "hits" in result and len(result["hits"]) == len(queries)
        assert sc.retries == 2  # the call in flight failed and was sent again
        reference = single.search_many(image=queries[:100], k=5, **where)
        for a, b in zip(result["hits"][100:200], reference):
            _same(a, b)
        assert ray.get(victim.pid.remote()) != pid
        # a write whose actor dies is retried without inserting twice
        ray.kill(victim, no_restart=False)
        more = _items(data, range(401, 431))
        sc.insert_all(more)
        assert len(sc) == 430
    finally:
        sc.close()
        db.close()


def test_error_when_the_retry_fails_too(cluster, tmp_path, data, models):
    sc = ShardedCollection.create(tmp_path, "docs", models["hq"], shards=2, columns={"topic": int}, max_restarts=0)
    try:
        sc.insert_all([{"image": data["image"][i], "topic": 1} for i in range(10)])
        ray.kill(sc.actor(0), no_restart=True)  # gone for good: the retry fails as well
        t0 = time.perf_counter()
        with pytest.raises(ShardError, match="shard 0"):
            sc.search(image=data["image"][0], k=3)
        assert time.perf_counter() - t0 < 60
    finally:
        sc.close()


@pytest.mark.parametrize("method", ["hq", "dcmh"])
def test_ddp_training_on_two_workers_matches_one_process(cluster, tmp_path, method):
    """A method trained with DistributedDataParallel on 2 Ray Train workers (gloo, CPU) against
    the same training in one process: each step applies the whole batch's gradient, so the first
    epoch's losses agree to float rounding and the final quality within noise. DCMH also has a
    non-gradient step (its binary matrix B, updated on rank 0 and broadcast)."""
    from hqdb.distributed import train_distributed
    from hqdb.metrics import harmonic_mean

    data = synthetic_pairs(1600, seed=5)
    kw = {"method": method, "epochs": 5, "bits": 32, "progress": False, "threads": 1}
    if method == "hq":
        kw.update(books=4, codewords=16)
    single = hqdb.train(data, **kw)
    ddp = train_distributed(data, num_workers=2, storage_path=tmp_path, **kw)
    assert ddp.config["method"] == method and ddp.config["train"]["epochs"] == 5
    first_single, first_ddp = single.config["history"][0], ddp.config["history"][0]
    terms = [t for t in first_single if t not in ("epoch", "seconds") and not t.startswith("val_")]
    assert terms and set(terms) <= set(first_ddp)
    for term in terms:
        assert first_ddp[term] == pytest.approx(first_single[term], rel=2e-3, abs=1e-5), term

    def quality(model):
        v = model.config["metrics"]["validation"]
        kind = "two_stage" if "two_stage" in v["i2t"] else "hamming"  # DCMH: bits only
        return harmonic_mean(v["i2t"][kind]["map@50"], v["t2i"][kind]["map@50"])

    # Both measured here on the same validation items; tolerance: the spread of single-process
    # runs over seeds on this set is about 0.01-0.02 MAP.
    assert quality(ddp) == pytest.approx(quality(single), abs=0.03)
    assert quality(ddp) > 0.8


def test_distributed_encoding_resumes_after_a_crash(cluster, tmp_path, data, models):
    """Ray Data encoders fill the shards; a run that dies after two batches is resumed by the same
    call, which skips what the shards hold; the result equals one file filled by insert_all."""
    from hqdb.distributed import encode_into_shards

    model = models["hq"]
    ids = np.arange(1, 901)
    corpus = {
        "id": ids,
        "image": data["image"][ids],
        "text": np.array([str(t) for t in data["text"][ids]]),
        "topic": data["labels"][ids],
        "n": np.array([f"item{i}" for i in ids]),
    }
    sc = ShardedCollection.create(tmp_path / "enc", "docs", model, shards=2, columns={"topic": int, "n": str})
    try:
        seen = []

        def crash(rows):
            seen.append(rows)
            if len(seen) == 2:
                raise KeyboardInterrupt("simulated crash after two committed batches")

        with pytest.raises(KeyboardInterrupt):
            encode_into_shards(sc, corpus, batch_size=200, concurrency=2, progress=False, on_batch=crash)
        done = len(sc)
        assert done == 400
        stats = encode_into_shards(sc, corpus, batch_size=200, concurrency=2, progress=False)
        assert stats == {"written": 500, "skipped": 400}
        assert len(sc) == 900
        again = encode_into_shards(sc, corpus, batch_size=300, concurrency=1, progress=False)
        assert again == {"written": 0, "skipped": 900}
        items = _items(data, ids)
        db, single = _reference(tmp_path, model, items)
        try:
            queries = data["image"][950:960]
            for kw in ({"k": 10}, {"k": 6, "candidates": 15}):
                for a, b in zip(sc.search_many(image=queries, **kw), single.search_many(image=queries, **kw)):
                    _same(a, b)
            _same(sc.search(text="castle tower", k=10), single.search(text="castle tower", k=10))
        finally:
            db.close()
        assert sc.insert({"image": data["image"][0], "topic": 0, "n": "next"}) == 901
    finally:
        sc.close()


def test_bad_arguments_are_clear_errors(tmp_path, models):
    from hqdb.distributed import DDP, train_distributed

    with pytest.raises(hqdb.CollectionError, match="shards"):
        ShardedCollection.create(tmp_path, "docs", models["hq"], shards=0)
    with pytest.raises(hqdb.CollectionError, match="name"):
        ShardedCollection.create(tmp_path, "../x", models["hq"], shards=2)
    with pytest.raises(hqdb.TrainingError, match="num_workers"):
        train_distributed({}, num_workers=0)
    with pytest.raises(hqdb.TrainingError, match="CPU"):
        train_distributed({}, use_gpu=True)
    with pytest.raises(hqdb.TrainingError, match="process group"):  # no torch.distributed group here
        DDP()
    (tmp_path / "bad.shards.json").write_text("[1, 2]")
    with pytest.raises(ShardError, match="manifest"):
        ShardedCollection(tmp_path, "bad")
    assert not list(tmp_path.glob("*.hqdb"))  # nothing created by the refused calls


def test_merge_equals_sorting_everything():
    """The driver's merge (partition on Hamming, ties by id) against the plain definition: sort
    the union by (hamming, id), keep the shortlist, sort that by (distance, hamming, id)."""
    from hqdb.distributed.shards import _merge

    rng = np.random.default_rng(7)
    for _ in range(300):
        shards = int(rng.integers(1, 8))
        sizes = rng.integers(0, 60, shards)
        ids = rng.permutation(10_000)[: sizes.sum()].astype(np.int64)
        parts, start = [], 0
        for s, n in enumerate(sizes):
            # few distinct values: ties in both distances
            dist = rng.integers(0, 5, n).astype(np.float64)
            parts.append((ids[start : start + n], dist, rng.integers(0, 4, n).astype(np.int32), np.full(n, s)))
            start += n
        k, c = int(rng.integers(1, 20)), int(rng.integers(1, 40))
        r = np.concatenate([p[0] for p in parts])
        d = np.concatenate([p[1] for p in parts])
        h = np.concatenate([p[2] for p in parts])
        keep = np.lexsort((r, h))[:c]
        expected = r[keep][np.lexsort((r[keep], h[keep], d[keep]))][:k]
        got = _merge(parts, k, c)
        assert got[0].tolist() == expected.tolist()
        owner = {int(i): s for p in parts for i, s in zip(p[0], p[3])}
        assert [owner[int(i)] for i in got[0]] == got[3].tolist()
