"""Search kernels (hqdb.kernels): exact agreement with a plain-numpy reference, across backends,
thread counts and code paths; sqlite-vec bit layout; input validation."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hqdb import kernels as K

NATIVE = K.BACKEND == "native"
needs_native = pytest.mark.skipif(not NATIVE, reason=f"native kernels unavailable: {K.FALLBACK_REASON}")
PROPS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# The Hamming scan paths this CPU and build run (scalar, avx2, avx512, neon), each forced in turn
# by the knob isa; "auto" alone on the numba backend (the knobs are no-ops there).
ISAS = K.info()["hamming_paths"] if NATIVE else ["auto"]


# ------------------------------------------------------------------------------------------
# Plain-numpy reference
# ------------------------------------------------------------------------------------------
def ref_hamming(codes, q):
    if len(codes) == 0:
        return np.zeros(0, np.int32)
    return np.unpackbits(codes ^ q[None, :], axis=1).sum(axis=1).astype(np.int32)


def ref_aqd(qcodes, lut):
    """-(LUT[0][b0] + LUT[1][b1] + ...), float32, book by book."""
    s = lut[0][qcodes[:, 0]].astype(np.float32)
    for l in range(1, lut.shape[0]):
        s = (s + lut[l][qcodes[:, l]]).astype(np.float32)
    return -s


def ref_search(codes, qcodes, rowids, valid, q, lut, *, k, candidates, mode):
    rows = np.arange(len(codes)) if valid is None else np.flatnonzero(valid)
    ham = ref_hamming(codes[rows], q)
    if mode == "hamming":
        order = np.lexsort((rowids[rows], ham))[:k]
        return rowids[rows][order], ham[order].astype(np.float32), ham[order]
    if mode == "two_stage":
        keep = np.lexsort((rowids[rows], ham))[: max(candidates, k)]
        rows, ham = rows[keep], ham[keep]
    dist = ref_aqd(qcodes[rows], lut)
    order = np.lexsort((rowids[rows], ham, dist))[:k]  # equal AQD: the closer bit code first
    return rowids[rows][order], dist[order], ham[order]


def assert_same(got, want):
    names = ("rowids", "distance", "hamming")
    dtypes = (np.int64, np.float32, np.int32)
    for name, g, w, dt in zip(names, got, want, dtypes):
        assert g.dtype == dt, f"{name}: dtype {g.dtype}"
        np.testing.assert_array_equal(g, np.asarray(w, dtype=dt), err_msg=name)


def make_table(rng, n, nb, m, kw, *, pool=0, valid_p=None, int_lut=True):
    """Random rows; pool > 0 draws codes from that many distinct codes (many ties)."""
    if pool:
        base = rng.integers(0, 256, (pool, nb), dtype=np.uint8)
        codes = np.ascontiguousarray(base[rng.integers(0, pool, n)])
    else:
        codes = rng.integers(0, 256, (n, nb), dtype=np.uint8)
    qcodes = rng.integers(0, kw, (n, m)).astype(np.uint8 if kw <= 256 else np.uint16)
    rowids = (rng.permutation(3 * n + 1)[:n] - n).astype(np.int64)  # unique, unsorted, some < 0
    valid = None if valid_p is None else (rng.random(n) < valid_p).astype(np.uint8)
    q = rng.integers(0, 256, nb, dtype=np.uint8)
    if int_lut:  # few distinct values: many equal distances
        lut = rng.integers(-4, 5, (m, kw)).astype(np.float32)
    else:
        lut = rng.standard_normal((m, kw)).astype(np.float32)
    return codes, qcodes, rowids, valid, q, lut


@contextlib.contextmanager
def knobs(**values):
    """Temporarily force native code paths (no-op on the numba backend)."""
    old = {name: K._tune(name, v) for name, v in values.items()}
    try:
        yield
    finally:
        for name, v in old.items():
            if v >= 0:
                K._tune(name, v)


# ------------------------------------------------------------------------------------------
# Property tests against the reference
# ------------------------------------------------------------------------------------------
@st.composite
def tables(draw):
    n = draw(st.integers(0, 3000))
    # the specialised sizes and edges often, any size sometimes
    nb = draw(st.one_of(st.sampled_from([1, 7, 8, 9, 16, 24, 32, 64, 128]), st.integers(1, 128)))
    m = draw(st.integers(1, 8))
    kw = draw(st.one_of(st.sampled_from([2, 255, 256, 257, 300]), st.integers(2, 300)))
    pool = draw(st.sampled_from([0, 0, 1, 3, 40]))
    valid_p = draw(st.sampled_from([None, 1.0, 0.7, 0.1, 0.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    return make_table(rng, n, nb, m, kw, pool=pool, valid_p=valid_p, int_lut=draw(st.booleans()))


@PROPS
@given(
    table=tables(),
    mode=st.sampled_from(K.MODES),
    k=st.integers(1, 60),
    candidates=st.integers(1, 400),
    threads=st.sampled_from([1, 2]),
    chunked=st.booleans(),
    path=st.sampled_from([0, 1, 2, 3]),
    isa=st.sampled_from(ISAS),
)
def test_search_matches_reference(table, mode, k, candidates, threads, chunked, path, isa):
    codes, qcodes, rowids, valid, q, lut = table
    want = ref_search(codes, qcodes, rowids, valid, q, lut, k=k, candidates=candidates, mode=mode)
    # chunked: small thread chunks, so threads=2 really splits even these small tables;
    # path/isa: every native route and scan path must give the same answer
    with knobs(min_chunk_rows=64 if chunked else 32768, path=path, isa=isa):
        got = K.search(codes, qcodes, rowids, valid, q, lut, k=k, candidates=candidates, mode=mode,
                       threads=threads)
    assert_same(got, want)
    nvalid = len(codes) if valid is None else int(valid.sum())
    assert len(got[0]) == min(k, nvalid)


@PROPS
@given(table=tables(), threads=st.sampled_from([1, 2]), isa=st.sampled_from(ISAS))
def test_hamming_distances_match_reference(table, threads, isa):
    codes, _, _, _, q, _ = table
    with knobs(isa=isa):
        got = K.hamming_distances(codes, q, threads=threads)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, ref_hamming(codes, q))


@PROPS
@given(
    m=st.integers(1, 8), kw=st.integers(1, 300), dim=st.integers(1, 200),
    seed=st.integers(0, 2**32 - 1),
)
def test_aqd_lut_exact_on_small_integers(m, kw, dim, seed):
    # Small integers: every partial sum is exact, so any summation order gives the same float32.
    rng = np.random.default_rng(seed)
    query = rng.integers(-20, 21, dim).astype(np.float32)
    cb = rng.integers(-20, 21, (m, kw, dim)).astype(np.float32)
    want = (cb.astype(np.float64) @ query.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(K.aqd_lut(query, cb), want)


def test_aqd_lut_close_to_float64_on_random_floats():
    rng = np.random.default_rng(7)
    query = rng.standard_normal(256).astype(np.float32)
    cb = rng.standard_normal((8, 256, 256)).astype(np.float32)
    got = K.aqd_lut(query, cb)
    assert got.dtype == np.float32 and got.shape == (8, 256)
    np.testing.assert_allclose(got, cb.astype(np.float64) @ query.astype(np.float64), rtol=1e-6, atol=1e-5)


def test_aqd_lut_sequential_float64_accumulation():
    # Exactly the documented rounding: a left-to-right float64 sum, rounded once to float32.
    rng = np.random.default_rng(3)
    query = rng.standard_normal(77).astype(np.float32)
    cb = (rng.standard_normal((2, 5, 77)) * 1e3).astype(np.float32)
    want = np.empty((2, 5), np.float32)
    for l in range(2):
        for j in range(5):
            acc = 0.0
            for i in range(77):
                acc += float(query[i]) * float(cb[l, j, i])
            want[l, j] = np.float32(acc)
    np.testing.assert_array_equal(K.aqd_lut(query, cb), want)


# ------------------------------------------------------------------------------------------
# Larger tables: threads, code paths, native vs numba
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def big():
    rng = np.random.default_rng(11)
    return make_table(rng, 150_000, 16, 4, 256, valid_p=0.9, int_lut=False)


@pytest.mark.parametrize("mode", K.MODES)
@pytest.mark.parametrize("candidates", [1, 100, 5000])
def test_threads_and_routes_do_not_change_results(big, mode, candidates):
    codes, qcodes, rowids, valid, q, lut = big
    want = ref_search(codes, qcodes, rowids, valid, q, lut, k=10, candidates=candidates, mode=mode)
    for threads in (1, 2, 3, 8):
        for path in (0, 1, 2):
            with knobs(path=path):
                got = K.search(codes, qcodes, rowids, valid, q, lut, k=10, candidates=candidates,
                               mode=mode, threads=threads)
            assert_same(got, want)


@needs_native
@pytest.mark.parametrize("nb", [8, 16, 32, 64, 128, 1, 9, 12, 24, 100])
@pytest.mark.parametrize("n", [20_003, 8, 7, 0])
def test_every_scan_path_agrees(nb, n):
    # Codes sizes with a vector path (8/16/32/64/128 bytes) and without; row counts with a tail
    # of 1..7 rows past the last full group of 8, exactly one group, less than one, none.
    rng = np.random.default_rng(nb * 100_003 + n)
    codes, qcodes, rowids, valid, q, lut = make_table(rng, n, nb, 3, 40, valid_p=0.8)
    queries = np.ascontiguousarray(np.vstack([rng.integers(0, 256, (3, nb), dtype=np.uint8),
                                              codes[:1]]))
    luts = rng.integers(-4, 5, (len(queries), 3, 40)).astype(np.float32)
    ref = ref_hamming(codes, q)
    results = {}
    for isa in ISAS:
        with knobs(isa=isa, min_chunk_rows=4096):
            assert K.info()["hamming_path"] == isa
            np.testing.assert_array_equal(K.hamming_distances(codes, q, threads=2), ref, err_msg=isa)
            got = []
            for mode in K.MODES:
                for k, c in ((1, 1), (25, 300), (10, 5000)):
                    for v in (valid, None):
                        got.append(K.search(codes, qcodes, rowids, v, q, lut, k=k, candidates=c,
                                            mode=mode, threads=2))
                        got.append(K.search_many(codes, qcodes, rowids, v, queries, luts, k=k,
                                                 candidates=c, mode=mode, threads=2))
            results[isa] = got
    for isa, got in results.items():
        for a, b in zip(got, results["scalar"]):
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y, err_msg=f"{isa} vs scalar")
    for mode in K.MODES:  # and the scalar path against the reference
        assert_same(results["scalar"][K.MODES.index(mode) * 12 + 4],  # k=25, c=300, valid
                    ref_search(codes, qcodes, rowids, valid, q, lut, k=25, candidates=300, mode=mode))


@pytest.fixture(scope="module")
def numba_api():
    try:
        return K._backend_api("numba")
    except ImportError as exc:  # pragma: no cover - numba is a dependency
        pytest.skip(f"numba backend unavailable: {exc}")


@needs_native
@pytest.mark.parametrize("seed", range(6))
def test_native_and_numba_identical(numba_api, seed):
    rng = np.random.default_rng(100 + seed)
    nb = [1, 16, 17, 32, 64, 128][seed]
    kw = [2, 256, 300, 16, 65536, 200][seed]
    n = [5000, 60_000, 3000, 20_000, 8000, 40_000][seed]
    codes, qcodes, rowids, valid, q, lut = make_table(
        rng, n, nb, 1 + seed, kw, pool=[0, 0, 5, 0, 0, 2][seed], valid_p=[None, 0.5, 1.0, 0.95, 0.3, 0.8][seed],
        int_lut=seed % 2 == 0,
    )
    for mode in K.MODES:
        for k, c in ((1, 1), (10, 1000), (200, 50), (n, n)):
            b = numba_api.search(codes, qcodes, rowids, valid, q, lut, k=k, candidates=c, mode=mode)
            for isa in ISAS:  # every scan path equals numba
                with knobs(isa=isa):
                    a = K.search(codes, qcodes, rowids, valid, q, lut, k=k, candidates=c, mode=mode,
                                 threads=2)
                for x, y in zip(a, b):
                    np.testing.assert_array_equal(x, y, err_msg=isa)
    for isa in ISAS:
        with knobs(isa=isa):
            np.testing.assert_array_equal(K.hamming_distances(codes, q), numba_api.hamming_distances(codes, q))
    query = rng.standard_normal(48).astype(np.float32)
    cb = rng.standard_normal((3, 50, 48)).astype(np.float32)
    np.testing.assert_array_equal(K.aqd_lut(query, cb), numba_api.aqd_lut(query, cb))


def test_numba_fallback_in_subprocess():
    """HQDB_DISABLE_NATIVE=1: the numba backend loads, warns exactly once, and is correct."""
    script = textwrap.dedent(
        """
        import warnings
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as caught:
            from hqdb import kernels as K
            import hqdb.kernels
        import numpy as np
        hits = [w for w in caught if issubclass(w.category, RuntimeWarning) and "hqdb" in str(w.message)]
        assert len(hits) == 1, [str(w.message) for w in caught]
        assert "using the numba fallback" in str(hits[0].message), hits[0].message
        assert K.BACKEND == "numba", K.BACKEND
        info = K.info()
        assert info["backend"] == "numba" and info["fallback_reason"], info
        rng = np.random.default_rng(0)
        codes = rng.integers(0, 256, (500, 16), dtype=np.uint8)
        qcodes = rng.integers(0, 16, (500, 2), dtype=np.uint8)
        rowids = rng.permutation(500).astype(np.int64)
        q = codes[7].copy()
        lut = rng.integers(-3, 4, (2, 16)).astype(np.float32)
        r, d, h = K.search(codes, qcodes, rowids, None, q, lut, k=3, candidates=50, mode="hamming")
        assert r[0] == rowids[7] and h[0] == 0 and d[0] == 0.0, (r, d, h)
        r2, d2, h2 = K.search(codes, qcodes, rowids, None, q, lut, k=5, candidates=50)
        assert len(r2) == 5 and h2.dtype == np.int32
        print("OK", r2.tolist(), d2.tolist(), h2.tolist())
        """
    )
    env = dict(os.environ, HQDB_DISABLE_NATIVE="1")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("OK")
    # and the numba answer equals this process's backend
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (500, 16), dtype=np.uint8)
    qcodes = rng.integers(0, 16, (500, 2), dtype=np.uint8)
    rowids = rng.permutation(500).astype(np.int64)
    lut = rng.integers(-3, 4, (2, 16)).astype(np.float32)
    r2, d2, h2 = K.search(codes, qcodes, rowids, None, codes[7].copy(), lut, k=5, candidates=50)
    assert out.stdout.split(maxsplit=1)[1].strip() == f"{r2.tolist()} {d2.tolist()} {h2.tolist()}"


# ------------------------------------------------------------------------------------------
# Ties, edge cases
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", K.MODES)
@pytest.mark.parametrize("threads", [1, 2])
def test_all_codes_identical_ties_break_by_rowid(mode, threads):
    n = 100_000
    rng = np.random.default_rng(5)
    codes = np.tile(rng.integers(0, 256, 16, dtype=np.uint8), (n, 1))
    qcodes = np.zeros((n, 2), np.uint8)
    lut = np.ones((2, 4), np.float32)
    rowids = rng.permutation(n).astype(np.int64) * 3 + 1
    q = rng.integers(0, 256, 16, dtype=np.uint8)
    r, d, h = K.search(codes, qcodes, rowids, None, q, lut, k=50, candidates=1000, mode=mode, threads=threads)
    np.testing.assert_array_equal(r, np.sort(rowids)[:50])
    assert len(set(d.tolist())) == 1 and len(set(h.tolist())) == 1


def test_k_larger_than_valid_rows_returns_only_valid():
    rng = np.random.default_rng(2)
    codes, qcodes, rowids, _, q, lut = make_table(rng, 300, 4, 2, 8)
    valid = np.zeros(300, np.uint8)
    valid[[5, 17, 299]] = 1
    for mode in K.MODES:
        r, d, h = K.search(codes, qcodes, rowids, valid, q, lut, k=100, candidates=2, mode=mode)
        assert sorted(r.tolist()) == sorted(rowids[[5, 17, 299]].tolist())
        assert len(d) == len(h) == 3


def test_bool_valid_mask_is_accepted():
    rng = np.random.default_rng(4)
    codes, qcodes, rowids, valid, q, lut = make_table(rng, 200, 8, 2, 8, valid_p=0.5)
    a = K.search(codes, qcodes, rowids, valid, q, lut, k=9, candidates=20)
    b = K.search(codes, qcodes, rowids, valid.astype(bool), q, lut, k=9, candidates=20)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("mode", K.MODES)
def test_empty_table_and_no_valid_rows(mode):
    codes = np.zeros((0, 16), np.uint8)
    qcodes = np.zeros((0, 4), np.uint8)
    lut = np.zeros((4, 8), np.float32)
    q = np.zeros(16, np.uint8)
    for valid in (None, np.zeros(0, np.uint8)):
        r, d, h = K.search(codes, qcodes, np.zeros(0, np.int64), valid, q, lut, k=5, candidates=10, mode=mode)
        assert (r.dtype, d.dtype, h.dtype) == (np.int64, np.float32, np.int32)
        assert len(r) == len(d) == len(h) == 0
    codes = np.ones((10, 16), np.uint8)
    r, d, h = K.search(codes, np.zeros((10, 4), np.uint8), np.arange(10, dtype=np.int64),
                       np.zeros(10, np.uint8), q, lut, k=5, candidates=10, mode=mode)
    assert len(r) == 0


def test_hamming_mode_without_qcodes_or_lut():
    rng = np.random.default_rng(8)
    codes, _, rowids, valid, q, _ = make_table(rng, 1000, 16, 1, 2, valid_p=0.5)
    got = K.search(codes, None, rowids, valid, q, None, k=7, candidates=1, mode="hamming")
    assert_same(got, ref_search(codes, None, rowids, valid, q, None, k=7, candidates=1, mode="hamming"))


def test_two_stage_with_all_candidates_equals_aqd():
    rng = np.random.default_rng(9)
    codes, qcodes, rowids, valid, q, lut = make_table(rng, 2000, 8, 4, 32, valid_p=0.6, int_lut=False)
    a = K.search(codes, qcodes, rowids, valid, q, lut, k=40, candidates=5000, mode="two_stage")
    b = K.search(codes, qcodes, rowids, valid, q, lut, k=40, candidates=1, mode="aqd")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_huge_k_and_candidates():
    rng = np.random.default_rng(10)
    codes, qcodes, rowids, valid, q, lut = make_table(rng, 100, 8, 2, 8)
    for mode in K.MODES:
        r, _, _ = K.search(codes, qcodes, rowids, valid, q, lut, k=2**70, candidates=2**70, mode=mode)
        assert len(r) == 100


def test_input_arrays_are_not_modified():
    rng = np.random.default_rng(12)
    table = make_table(rng, 5000, 16, 3, 64, valid_p=0.7)
    copies = [None if a is None else a.copy() for a in table]
    for mode in K.MODES:
        K.search(*table, k=10, candidates=100, mode=mode, threads=2)
    for a, b in zip(table, copies):
        if a is not None:
            np.testing.assert_array_equal(a, b)


def test_read_only_inputs_work():
    rng = np.random.default_rng(13)
    table = make_table(rng, 500, 16, 3, 64, valid_p=0.7)
    for a in table:
        if a is not None:
            a.setflags(write=False)
    want = ref_search(*table, k=5, candidates=50, mode="two_stage")
    assert_same(K.search(*table, k=5, candidates=50), want)


# ------------------------------------------------------------------------------------------
# Bit layout: pack_bits / unpack_bits, and agreement with sqlite-vec
# ------------------------------------------------------------------------------------------
def test_pack_bits_layout_lsb_first():
    x = np.full(16, -1.0, np.float32)
    x[0] = x[9] = x[15] = 0.5
    x[3] = 0.0  # not > 0
    assert K.pack_bits(x).tolist() == [0b00000001, 0b10000010]
    assert K.pack_bits(np.stack([x, -x])).shape == (2, 2)


@pytest.mark.parametrize("n", [8, 16, 64, 128, 136, 1024])
def test_pack_bits_one_vector_matches_numpy(n):
    """One float32 vector takes the native one-call route on the native backend (a search's
    query): the same bits as numpy's packbits of x > 0, zeros, -0.0 and denormals included,
    and NaN or infinity anywhere refused."""
    rng = np.random.default_rng(n)
    for _ in range(20):
        x = rng.standard_normal(n).astype(np.float32)
        x[rng.random(n) < 0.2] = 0.0
        x[rng.random(n) < 0.1] = -0.0
        x[rng.random(n) < 0.05] = np.float32(1e-45)
        x[rng.random(n) < 0.05] = -np.float32(1e-45)
        np.testing.assert_array_equal(K.pack_bits(x), np.packbits(x > 0, bitorder="little"))
        ro = np.frombuffer(x.tobytes(), dtype="<f4")  # read-only, as a query BLOB arrives
        np.testing.assert_array_equal(K.pack_bits(ro), np.packbits(x > 0, bitorder="little"))
    for bad in (np.nan, np.inf, -np.inf):
        for where in (0, n - 1):
            y = np.ones(n, np.float32)
            y[where] = bad
            with pytest.raises(ValueError, match="NaN or infinity"):
                K.pack_bits(y)


def test_unpack_bits_inverts_pack_bits():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    back = K.unpack_bits(K.pack_bits(x), 64)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, np.where(x > 0, 1.0, -1.0))
    np.testing.assert_array_equal(K.pack_bits(back), K.pack_bits(x))


def test_pack_bits_and_hamming_match_sqlite_vec():
    apsw = pytest.importorskip("apsw")
    sqlite_vec = pytest.importorskip("sqlite_vec")
    conn = apsw.Connection(":memory:")
    conn.enable_load_extension(True)
    conn.load_extension(sqlite_vec.loadable_path())
    rng = np.random.default_rng(21)
    for n in (8, 24, 128, 1024):
        xs = rng.standard_normal((6, n)).astype(np.float32)
        xs[0, : n // 2] = 0.0  # zeros map to 0 bits in both
        packed = K.pack_bits(xs)
        for x, p in zip(xs, packed):
            (blob,) = conn.execute("SELECT vec_quantize_binary(vec_f32(?))", (x.tobytes(),)).fetchone()
            assert bytes(blob) == p.tobytes()
        dists = K.hamming_distances(packed, packed[0])
        for p, want in zip(packed, dists):
            (d,) = conn.execute(
                "SELECT vec_distance_hamming(vec_bit(?), vec_bit(?))", (p.tobytes(), packed[0].tobytes())
            ).fetchone()
            assert d == want


# ------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------
@pytest.fixture
def good():
    rng = np.random.default_rng(0)
    codes, qcodes, rowids, valid, q, lut = make_table(rng, 50, 16, 4, 16, valid_p=0.5)
    return dict(codes=codes, qcodes=qcodes, rowids=rowids, valid=valid, query_bits=q, lut=lut)


def call(args, **kw):
    opts = dict(k=5, candidates=10, mode="two_stage")
    opts.update(kw)
    return K.search(args["codes"], args["qcodes"], args["rowids"], args["valid"], args["query_bits"],
                    args["lut"], **opts)


@pytest.mark.parametrize(
    "field, value, exc, match",
    [
        ("codes", lambda a: a.astype(np.int8), TypeError, "codes must have dtype uint8"),
        ("codes", lambda a: np.asfortranarray(a), ValueError, "C-contiguous"),
        ("codes", lambda a: a[::2], ValueError, "C-contiguous"),
        ("codes", lambda a: a.ravel(), ValueError, "2-dimensional"),
        ("codes", lambda a: a.tolist(), TypeError, "numpy array"),
        ("codes", lambda a: np.zeros((50, 129), np.uint8), ValueError, "1..128 bytes"),
        ("query_bits", lambda a: a[:8].copy(), ValueError, "but the codes have 16 bytes"),
        ("query_bits", lambda a: a.astype(np.uint16), TypeError, "query_bits must have dtype uint8"),
        ("rowids", lambda a: a.astype(np.int32), TypeError, "rowids must have dtype int64"),
        ("rowids", lambda a: a.astype(">i8"), TypeError, "rowids must have dtype int64"),
        ("rowids", lambda a: a[:10].copy(), ValueError, "rowids has 10 entries"),
        ("valid", lambda a: a.astype(np.int32), TypeError, "valid must have dtype"),
        ("valid", lambda a: a[:-1].copy(), ValueError, "valid has 49 entries"),
        ("qcodes", lambda a: a.astype(np.int16), TypeError, "qcodes must have dtype"),
        ("qcodes", lambda a: a[:, :3].copy(), ValueError, "lut has 4 rows but qcodes has 3"),
        ("qcodes", lambda a: np.zeros((50, 0), np.uint8), ValueError, "at least one column"),
        ("qcodes", lambda a: None, ValueError, "needs qcodes and lut"),
        ("lut", lambda a: None, ValueError, "needs qcodes and lut"),
        ("lut", lambda a: a.astype(np.float64), TypeError, "lut must have dtype float32"),
        ("lut", lambda a: np.where(np.arange(16) == 3, np.nan, a).astype(np.float32), ValueError, "NaN"),
        ("lut", lambda a: np.full_like(a, np.inf), ValueError, "NaN or infinity"),
    ],
)
def test_bad_search_input(good, field, value, exc, match):
    good[field] = value(good[field])
    with pytest.raises(exc, match=match):
        call(good)


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(k=0), ValueError, "k must be >= 1"),
        (dict(k=-3), ValueError, "k must be >= 1"),
        (dict(k=2.0), TypeError, "k must be an integer"),
        (dict(k=True), TypeError, "k must be an integer"),
        (dict(candidates=0), ValueError, "candidates must be >= 1"),
        (dict(threads=0), ValueError, "threads must be >= 1"),
        (dict(mode="cosine"), ValueError, "unknown mode 'cosine'"),
        (dict(mode=None), ValueError, "unknown mode"),
    ],
)
def test_bad_search_scalars(good, kw, exc, match):
    with pytest.raises(exc, match=match):
        call(good, **kw)


@pytest.mark.parametrize("mode", ["aqd", "two_stage"])
@pytest.mark.parametrize("dtype, kw", [(np.uint8, 16), (np.uint16, 300)])
def test_qcode_out_of_range(good, mode, dtype, kw):
    good["qcodes"] = good["qcodes"].astype(dtype)
    good["lut"] = np.zeros((4, kw), np.float32)
    good["valid"] = None
    good["qcodes"][:, 2] = kw  # every row: any scored row trips the check
    with pytest.raises(ValueError, match="qcode out of range"):
        call(good, mode=mode)
    good["qcodes"][:, 2] = kw - 1
    call(good, mode=mode)  # the largest valid code is fine


def test_qcode_out_of_range_in_skipped_rows_is_not_read(good):
    good["valid"] = np.ones(50, np.uint8)
    good["valid"][7] = 0
    good["qcodes"][7, 0] = 200  # >= 16 codewords, but row 7 is never scored
    call(good, mode="aqd")


def test_bad_hamming_distances_input():
    codes = np.zeros((4, 16), np.uint8)
    with pytest.raises(ValueError, match="16 bytes"):
        K.hamming_distances(codes, np.zeros(8, np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        K.hamming_distances(codes.astype(np.float32), np.zeros(16, np.uint8))
    with pytest.raises(ValueError, match="C-contiguous"):
        K.hamming_distances(np.zeros((4, 32), np.uint8)[:, ::2], np.zeros(16, np.uint8))


def test_bad_aqd_lut_input():
    q = np.ones(8, np.float32)
    cb = np.ones((2, 4, 8), np.float32)
    with pytest.raises(ValueError, match="NaN or infinity"):
        K.aqd_lut(np.where(np.arange(8) == 2, np.nan, q).astype(np.float32), cb)
    bad = cb.copy()
    bad[1, 2, 3] = np.inf
    with pytest.raises(ValueError, match="codebooks contain NaN"):
        K.aqd_lut(q, bad)
    with pytest.raises(ValueError, match="query has 7 dimensions"):
        K.aqd_lut(q[:7].copy(), cb)
    with pytest.raises(TypeError, match="float32"):
        K.aqd_lut(q.astype(np.float64), cb)
    with pytest.raises(ValueError, match="3-dimensional"):
        K.aqd_lut(q, cb[0])
    with pytest.raises(ValueError, match="C-contiguous"):
        K.aqd_lut(q, np.ones((2, 4, 16), np.float32)[:, :, ::2])


def test_bad_pack_bits_input():
    with pytest.raises(ValueError, match="multiple of 8"):
        K.pack_bits(np.ones(12, np.float32))
    with pytest.raises(ValueError, match="multiple of 8"):
        K.pack_bits(np.ones((3, 0), np.float32))
    with pytest.raises(ValueError, match="NaN or infinity"):
        K.pack_bits(np.array([1, 2, np.nan, 4, 5, 6, 7, 8], np.float32))
    with pytest.raises(ValueError, match="NaN or infinity"):
        K.pack_bits(np.array([1, 2, -np.inf, 4, 5, 6, 7, 8], np.float64))
    with pytest.raises(TypeError, match="real-valued"):
        K.pack_bits(np.array(["a"] * 8))
    with pytest.raises(ValueError, match="n must be 8"):
        K.unpack_bits(np.zeros(2, np.uint8), 15)


# ------------------------------------------------------------------------------------------
# Build and backend info
# ------------------------------------------------------------------------------------------
def test_info():
    info = K.info()
    assert info["backend"] == K.BACKEND in ("native", "numba")
    assert (info["fallback_reason"] is None) == (K.BACKEND == "native")
    assert set(info["cpu"]) == {"popcnt", "avx2", "avx512_vpopcntdq", "neon"}
    assert all(isinstance(v, bool) for v in info["cpu"].values())
    assert isinstance(info["openmp"], bool) and info["max_threads"] >= 1
    if K.BACKEND == "numba":
        assert info["hamming_path"] == "numba" and info["hamming_paths"] == []
        return
    # the path in use: the best this CPU and build have, unless a test knob forces another
    assert "scalar" in info["hamming_paths"] and info["hamming_path"] == info["hamming_paths"][-1]
    assert set(info["hamming_paths"]) <= {"scalar", "avx2", "avx512", "neon"}
    cpu = info["cpu"]
    if "avx2" in info["hamming_paths"]:
        assert cpu["avx2"] and cpu["popcnt"]
    if "avx512" in info["hamming_paths"]:
        assert cpu["avx512_vpopcntdq"]
    if "neon" in info["hamming_paths"]:
        assert cpu["neon"]
    if os.environ.get("HQDB_NATIVE_PORTABLE") != "1" and K.info()["hamming_impl"] != "portable":
        # x86-64 builds have the AVX2 scans: any CPU with AVX2 gets them
        assert ("avx2" in info["hamming_paths"]) == (cpu["avx2"] and cpu["popcnt"])
    words = {"scalar": ("popcnt", "swar", "portable"), "avx2": ("avx2 ",), "avx512": ("avx512-vpopcntdq ",),
             "neon": ("neon ",)}
    for isa in info["hamming_paths"]:
        with knobs(isa=isa):
            assert K.info()["hamming_path"] == isa
            assert K.info()["hamming_impl"].startswith(words[isa])
    assert K.info() == info


@needs_native
def test_native_build_uses_hardware_popcount():
    objdump = shutil.which("objdump")
    if not objdump:
        pytest.skip("objdump not installed")
    if K.info()["hamming_impl"] == "portable":
        pytest.skip("native module built without the x86 multi-versioned code (HQ_PORTABLE)")
    from hqdb.kernels import _native

    asm = subprocess.run([objdump, "-d", _native.__file__], capture_output=True, text=True, check=True).stdout
    assert "popcnt" in asm  # the popcnt clone of the Hamming loops
    assert "vpopcntq" in asm  # the AVX-512 scans, built whatever the CPU
    assert "vpshufb" in asm and "vpsadbw" in asm  # the AVX2 scans' nibble popcount
    # the portable clone must not call libgcc's software popcount
    assert "__popcountdi2" not in asm


@pytest.mark.parametrize("order", ["farthest_first", "nearest_first", "valid_at_end"])
def test_adversarial_row_orders(order):
    # Rows in storage order that defeat the sampled guess / the shrinking bound of the scan.
    rng = np.random.default_rng(31)
    n = 120_000
    codes, qcodes, rowids, valid, q, lut = make_table(rng, n, 16, 2, 64, int_lut=False)
    ham = ref_hamming(codes, q)
    if order != "valid_at_end":
        perm = np.argsort(-ham if order == "farthest_first" else ham, kind="stable")
        codes, qcodes = np.ascontiguousarray(codes[perm]), np.ascontiguousarray(qcodes[perm])
    else:
        valid = np.zeros(n, np.uint8)
        valid[-500:] = 1
    for mode in K.MODES:
        for threads in (1, 2):
            want = ref_search(codes, qcodes, rowids, valid, q, lut, k=20, candidates=300, mode=mode)
            got = K.search(codes, qcodes, rowids, valid, q, lut, k=20, candidates=300, mode=mode,
                           threads=threads)
            assert_same(got, want)


# ------------------------------------------------------------------------------------------
# The C interface itself: one argument struct, one argument check, the knobs
# ------------------------------------------------------------------------------------------
def _raw_args(size=1, **fields):
    """An hq_search_args for `size` queries over a small valid table, `fields` overriding its
    fields (the arrays it points into are returned with it, to keep them alive)."""
    impl = K._IMPL
    ffi = impl.ffi
    rng = np.random.default_rng(3)
    codes, qcodes, rowids, _, _, _ = make_table(rng, 300, 16, 2, 8)
    queries = rng.integers(0, 256, (size, 16), dtype=np.uint8)
    luts = rng.standard_normal((size, 2, 8)).astype(np.float32)
    outs = (np.empty((size, 5), np.int64), np.empty((size, 5), np.float32),
            np.empty((size, 5), np.int32), np.full(size, -1, np.int64))
    arrays = dict(codes=("uint8_t[]", codes), qcodes=("uint8_t[]", qcodes), rowids=("int64_t[]", rowids),
                  query_bits=("uint8_t[]", queries), luts=("float[]", luts),
                  out_rowids=("int64_t[]", outs[0]), out_dist=("float[]", outs[1]),
                  out_ham=("int32_t[]", outs[2]), out_n=("int64_t[]", outs[3]))
    keep = {name: ffi.from_buffer(ct, arr) for name, (ct, arr) in arrays.items()}
    values = dict(keep, valid=ffi.NULL, n_rows=300, code_bytes=16, qcode_bytes=1, books=2,
                  codewords=8, n_queries=size, mode=2, threads=1, k=5, candidates=20)
    values.update(fields)
    a = ffi.new("hq_search_args *", values)
    return a, (keep, arrays, outs)


@needs_native
@pytest.mark.parametrize("entry", ["hq_search", "hq_search_many"])
@pytest.mark.parametrize(
    "fields",
    [dict(code_bytes=0), dict(code_bytes=129), dict(n_rows=-1), dict(k=0), dict(candidates=0),
     dict(mode=3), dict(mode=-1), dict(n_queries=-1), dict(qcode_bytes=3), dict(books=0),
     dict(codewords=0), "codes", "rowids", "qcodes", "luts", "query_bits", "out_rowids",
     "out_dist", "out_ham", "out_n"],
    ids=str,
)
def test_native_entry_points_share_one_argument_check(entry, fields):
    # Python validates first; this checks the C side's own guard, the same for both entry points.
    size = 1 if entry == "hq_search" else 6
    if isinstance(fields, str):
        fields = {fields: K._IMPL.ffi.NULL}
    a, held = _raw_args(size, **fields)
    assert getattr(K._IMPL.lib, entry)(a) == K._ERR_ARG
    good, held = _raw_args(size)
    assert getattr(K._IMPL.lib, entry)(good) == K._OK
    assert (held[2][3] == 5).all()


@needs_native
def test_native_empty_searches_and_hamming_mode_without_qcodes():
    ffi = K._IMPL.ffi
    lib = K._IMPL.lib
    for entry in (lib.hq_search, lib.hq_search_many):
        a, held = _raw_args(1, n_rows=0, codes=ffi.NULL, rowids=ffi.NULL)
        assert entry(a) == K._OK and held[2][3][0] == 0  # out_n zeroed
        a, held = _raw_args(1, mode=0, qcodes=ffi.NULL, luts=ffi.NULL, qcode_bytes=0, books=0)
        assert entry(a) == K._OK and held[2][3][0] == 5
    a, held = _raw_args(2)
    assert lib.hq_search(a) == K._ERR_ARG  # one query only
    assert lib.hq_search(ffi.NULL) == lib.hq_search_many(ffi.NULL) == K._ERR_ARG


@needs_native
def test_knobs_are_the_fields_of_hq_knobs():
    fields = [name for name, _ in K._IMPL.ffi.typeof("hq_knobs").fields]
    assert sorted(fields) == sorted(K._KNOBS)
    for knob in K._KNOBS:
        prev = K._tune(knob)
        assert K._tune(knob, prev if prev >= 0 else -1) == prev  # reading, writing back
        assert K._tune(knob) == prev
    with knobs(path=3, min_chunk_rows=7):
        assert K._tune("path") == 3 and K._tune("min_chunk_rows") == 7
    unavailable = [isa for isa in K.ISA_PATHS[1:] if isa not in ISAS]  # e.g. neon on x86
    for knob, bad in (("path", 4), ("isa", 5), ("min_chunk_rows", 0), *(("isa", x) for x in unavailable)):
        prev = K._tune(knob)
        with pytest.raises(ValueError, match="out of range"):
            K._tune(knob, bad)
        assert K._tune(knob) == prev  # nothing changed
    with pytest.raises(ValueError, match="unknown knob"):
        K._tune("threads", 1)
    with pytest.raises(ValueError, match="unknown value"):
        K._tune("isa", "sse")
    with pytest.raises(ValueError, match="unknown value"):
        K._tune("path", "avx2")
    # the isa knob by name or number; 0 (auto) is the best path there is
    with knobs(isa="scalar"):
        assert K._tune("isa") == 1 and K.info()["hamming_path"] == "scalar"
        with knobs(isa=0):
            assert K.info()["hamming_path"] == ISAS[-1]


def test_cross_compile_neon_scans():
    """native/cross_check.sh: the kernel sources, NEON scans included, compiled for aarch64 with
    -Wall -Wextra -Werror, and run (every path against scalar) under qemu-aarch64 if installed.
    Skipped without the aarch64 cross compiler."""
    if not shutil.which(os.environ.get("CC_AARCH64", "aarch64-linux-gnu-gcc")) or not shutil.which("sh"):
        pytest.skip("no aarch64-linux-gnu-gcc (Debian: apt-get install gcc-aarch64-linux-gnu qemu-user)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, CC=os.environ.get("CC_AARCH64", "aarch64-linux-gnu-gcc"))
    r = subprocess.run(["sh", os.path.join(root, "native", "cross_check.sh")], capture_output=True, text=True,
                       env=env, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "vcnt instructions" in r.stdout
    if shutil.which("qemu-aarch64"):
        assert "paths: scalar neon (in use: neon)" in r.stdout and "OK:" in r.stdout, r.stdout
