"""``hqdb demo --raw`` shows the engine as documented (issue 17, item 7): more candidates never
rank worse, and AQD over every row (sign bits + books) ranks better than the Hamming distance."""

from __future__ import annotations

from hqdb.demo import run


def test_raw_demo_recall_grows_with_candidates(tmp_path):
    lines: list[str] = []
    r = run(str(tmp_path / "raw.db"), n=8000, queries=40, out=lines.append)
    text = "\n".join(lines)
    assert "quantizer 'bits_pq'" in text and "What candidates trades" in text
    ham, c100, c1000, c10000, full = (
        r[m]["recall"] for m in ("hamming only", "two-stage c=100", "two-stage c=1000", "two-stage c=10000", "AQD over all")
    )
    assert c100 >= ham + 0.1, r  # the re-rank adds what the Hamming distance misses
    assert c100 <= c1000 + 0.02 and c1000 <= c10000 + 0.02, r
    assert c10000 == full, r  # c >= N: the same search as AQD over all rows
    assert r["AQD over all"]["precision"] > r["hamming only"]["precision"], r
