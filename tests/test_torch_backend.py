"""The torch backend (hqdb.kernels.torch_backend) on the torch CPU device: results identical to the
native kernels (rowids, order, distances, ties by rowid); device-resident copies; the table's
device= routing; a clear error without torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import hqdb
from hqdb.engine.query import resolve
from conftest import random_table
from hqdb import kernels as K
from test_batch import batches, make_batch
from test_kernels import PROPS, make_table

torch = pytest.importorskip("torch")
from hqdb.kernels import torch_backend as TB  # noqa: E402  (after the torch check)

# The CI machine and this one have no GPU: the CUDA device is tested where one exists.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def assert_identical(got, want):
    for name, g, w in zip(("rowids", "distance", "hamming"), got, want):
        assert g.dtype == w.dtype, name
        assert g.shape == w.shape, name
        np.testing.assert_array_equal(g, w, err_msg=name)
        if name == "distance":  # the same floats bit for bit (a -0.0 stays -0.0)
            np.testing.assert_array_equal(g.view(np.int32), w.view(np.int32), err_msg="distance bits")


@PROPS
@given(
    batch=batches(),
    mode=st.sampled_from(K.MODES),
    k=st.integers(1, 40),
    candidates=st.integers(1, 1200),
    device=st.sampled_from(DEVICES),
)
def test_torch_equals_native(batch, mode, k, candidates, device):
    codes, qcodes, rowids, valid, queries, luts = batch
    want = K.search_many(codes, qcodes, rowids, valid, queries, luts, k=k, candidates=candidates,
                         mode=mode, threads=2)
    got = TB.search_many(codes, qcodes, rowids, valid, queries, luts, k=k, candidates=candidates,
                         mode=mode, device=device)
    assert_identical(got, want)


@pytest.mark.parametrize("mode", K.MODES)
def test_torch_equals_native_on_a_larger_table_with_resident_codes(mode):
    rng = np.random.default_rng(8)
    codes, qcodes, rowids, valid, _, _ = make_table(rng, 200_000, 16, 4, 256, valid_p=0.9)
    queries, luts = make_batch(rng, 70, 16, 4, 256, int_lut=False)
    resident = TB.DeviceCodes(codes, qcodes, rowids, "cpu")
    for candidates in (10, 2000):
        want = K.search_many(codes, qcodes, rowids, valid, queries, luts, k=10,
                             candidates=candidates, mode=mode, threads=2)
        got = TB.search_many(codes, qcodes, rowids, valid, queries, luts, k=10,
                             candidates=candidates, mode=mode, resident=resident)
        assert_identical(got, want)


def test_ties_and_negative_zero():
    # every row at distance 0 / AQD score 0: order by rowid alone; -(0.0) is -0.0 as in C
    n = 3000
    codes = np.zeros((n, 4), np.uint8)
    qcodes = np.zeros((n, 2), np.uint8)
    rowids = (np.arange(n, dtype=np.int64) * 7919) % 10007
    queries = np.zeros((3, 4), np.uint8)
    luts = np.zeros((3, 2, 3), np.float32)
    for mode in K.MODES:
        want = K.search_many(codes, qcodes, rowids, None, queries, luts, k=9, candidates=100, mode=mode)
        got = TB.search_many(codes, qcodes, rowids, None, queries, luts, k=9, candidates=100, mode=mode)
        assert_identical(got, want)
        assert got[0][0].tolist() == sorted(rowids.tolist())[:9]


def test_bad_input_is_refused_like_the_native_kernels():
    rng = np.random.default_rng(4)
    codes, qcodes, rowids, valid, _, _ = make_table(rng, 300, 8, 2, 16, valid_p=0.5)
    queries, luts = make_batch(rng, 3, 8, 2, 16, int_lut=True)
    with pytest.raises(ValueError, match="NaN"):
        TB.search_many(codes, qcodes, rowids, valid, queries, np.full_like(luts, np.inf), k=3, candidates=9)
    with pytest.raises(ValueError, match="bytes"):
        TB.search_many(codes, qcodes, rowids, valid, queries[:, :4].copy(), luts, k=3, candidates=9)
    bad = qcodes.copy()
    bad[int(np.flatnonzero(valid)[0]), 0] = 16
    for mode in ("aqd", "two_stage"):
        with pytest.raises(ValueError, match="qcode out of range"):
            TB.search_many(codes, bad, rowids, valid, queries, luts, k=3, candidates=300, mode=mode)
    with pytest.raises(ValueError, match="not a torch device"):
        TB.DeviceCodes(codes, qcodes, rowids, "warp-drive")
    resident = TB.DeviceCodes(codes[:100].copy(), qcodes[:100].copy(), rowids[:100].copy())
    with pytest.raises(ValueError, match="other shapes"):
        TB.search_many(codes, qcodes, rowids, valid, queries, luts, k=3, candidates=9, resident=resident)


def test_cpu_device_connection_routes_batches_to_torch(db_path, monkeypatch):
    conn = hqdb.connect(db_path, device="cpu")
    try:
        assert conn.hq.device == "cpu"
        random_table(conn, "docs", n=2500)
        rng = np.random.default_rng(6)
        vecs = rng.standard_normal((11, 64)).astype(np.float32)
        table = conn.hq.table("docs")
        calls = []
        real = TB.search_many
        monkeypatch.setattr(TB, "search_many", lambda *a, **kw: calls.append(1) or real(*a, **kw))
        got = table.search_many(0, vecs, resolve(8, 100, "two_stage"), device=conn.hq.device)
        assert calls == [1]
        for j, v in enumerate(vecs):
            want = conn.execute("SELECT rowid, distance FROM docs WHERE hq_match(docs.code, ?) "
                                "AND k = 8 AND candidates = 100", (v.tobytes(),)).fetchall()
            assert list(zip(got[0][j].tolist(), got[1][j].tolist())) == want
        # the device copy is made once per table version, and renewed after a write
        first = table._device_cache[0][1]
        table.search_many(0, vecs[:2], resolve(8, 100, "two_stage"), device="cpu")
        assert table._device_cache[0][1] is first
        conn.execute("DELETE FROM docs WHERE rowid = 5")
        table.search_many(0, vecs[:2], resolve(8, 100, "two_stage"), device="cpu")
        assert table._device_cache[0][1] is not first
    finally:
        conn.close()


def test_clear_error_without_torch():
    # A subprocess where `import torch` fails: the backend says what to install.
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None  # makes `import torch` raise ImportError
        import numpy as np
        from hqdb.kernels import torch_backend
        assert torch_backend.cuda_available() is False
        try:
            torch_backend.DeviceCodes(np.zeros((1, 1), np.uint8), None, np.zeros(1, np.int64))
        except ImportError as e:
            print(e)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "needs PyTorch" in out.stdout and "hqdb[train]" in out.stdout


def test_cpu_device_batches_report_l2_distances_like_hq_match(db_path):
    """metric 'l2': the torch route adds each query's offset ‖q‖² exactly as the native one."""
    conn = hqdb.connect(db_path, device="cpu")
    try:
        random_table(conn, "docs", n=600, extra=", metric='l2'")
        vecs = np.random.default_rng(7).integers(-8, 9, (6, 64)).astype(np.float32)
        for mode in ("aqd", "two_stage"):
            got = conn.hq.table("docs").search_many(0, vecs, resolve(9, 50, mode), device=conn.hq.device)
            for j, v in enumerate(vecs):
                want = conn.execute("SELECT rowid, distance FROM docs WHERE hq_match(docs.code, ?) "
                                    "AND k = 9 AND candidates = 50 AND mode = ?", (v.tobytes(), mode)).fetchall()
                assert list(zip(got[0][j].tolist(), got[1][j].tolist())) == want
    finally:
        conn.close()
