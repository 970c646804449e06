"""Pictures of evaluation and benchmark results (matplotlib, the ``plot`` extra, imported only here).

- :func:`eval_figure`: precision–recall curves for image→text and text→image (one line per
  model) and MAP@50 by code length for each ranking (``hqdb eval --plot``);
- :func:`bench_figure`: search latency and MAP@k against the number of candidates, the trade-off
  of the HQ paper's Figure 4, as two panels over one axis (``hqdb bench --plot``).
"""

from __future__ import annotations

DIRECTION_TITLES = {"i2t": "image → text", "t2i": "text → image"}
# (line style, marker, marker size, filled): two-stage and AQD coincide when the candidates cover
# every item, so two-stage is drawn as large hollow markers around AQD's small filled ones.
RANKING_STYLES = {
    "two_stage": ("-", "o", 10, False),
    "aqd": (":", "^", 5, True),
    "hamming": ("--", "s", 6, True),
    "lossless": ("-.", "d", 6, True),
}


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            "pictures need matplotlib, which is not installed (the plot extra: pip install -e '.[plot]')",
            name="matplotlib",
        ) from e
    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def require() -> None:
    """Fail now, before a long evaluation or benchmark, if the pictures could not be drawn."""
    _pyplot()


def eval_figure(results: list[dict], curves: dict, path: str) -> None:
    """Write :func:`draw_eval`'s figure to ``path`` (PNG)."""
    plt = _pyplot()
    fig = draw_eval(results, curves)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_eval(results: list[dict], curves: dict):
    """``results``: :func:`hqdb.evaluate.evaluate` outputs (one per model); ``curves``: per model
    name, per direction, ``{"precision": [...], "recall": [...]}``. A 2 x 2 figure: the curves on
    top (the models' legend above them), MAP@50 by code length below (the rankings' legend under
    them); no legend sits on the data."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 8.6), layout="constrained")
    model_lines: dict = {}
    ranking_lines: dict = {}
    for col, direction in enumerate(("i2t", "t2i")):
        ax = axes[0, col]
        for r in results:
            c = curves.get(r["model"], {}).get(direction)
            if c:
                label = f"{r['model']} ({r['bits']} bits)"
                (model_lines[label],) = ax.plot(c["recall"], c["precision"], label=label)
        ax.set(
            title=f"precision–recall, {DIRECTION_TITLES[direction]}",
            xlabel="recall",
            ylabel="precision",
            xlim=(0, 1),
            ylim=(0, 1.02),
        )
        ax.grid(alpha=0.3)
        ax = axes[1, col]
        with_dir = sorted((r for r in results if direction in r), key=lambda r: r["bits"])
        bits = [r["bits"] for r in with_dir]
        for ranking, (line, marker, size, filled) in RANKING_STYLES.items():
            values = [r[direction][ranking]["map@50"] for r in with_dir if ranking in r[direction]]
            if len(values) == len(bits) and bits:
                (h,) = ax.plot(
                    bits, values, linestyle=line, marker=marker, markersize=size, label=ranking.replace("_", "-")
                )
                if not filled:
                    h.set_markerfacecolor("none")
                ranking_lines[h.get_label()] = h
        ax.set(title=f"MAP@50 by code length, {DIRECTION_TITLES[direction]}", xlabel="bits", ylabel="MAP@50")
        if bits:
            ax.set_xticks(sorted(set(bits)))
            lo, hi = min(bits), max(bits)
            pad = (hi - lo) * 0.08 or 4
            ax.set_xlim(lo - pad, hi + pad)
        ax.grid(alpha=0.3)
    if model_lines:
        fig.legend(model_lines.values(), model_lines.keys(), loc="outside upper center", ncol=min(len(model_lines), 4))
    if ranking_lines:
        fig.legend(ranking_lines.values(), ranking_lines.keys(), loc="outside lower center", ncol=len(ranking_lines))
    return fig


def bench_figure(result: dict, path: str) -> None:
    """Write :func:`draw_bench`'s figure to ``path`` (PNG)."""
    plt = _pyplot()
    fig = draw_bench(result)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_bench(result: dict):
    """``result``: the dict ``hqdb bench --json`` prints. Two panels over the same candidate axis
    (log-scaled, every measured count labelled): p50 latency per query from 0 on top, MAP@k
    below, each point with its value; no legend needed."""
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter, NullLocator

    rows = result["rows"]
    k = result["k"]
    cands = [r["candidates"] for r in rows]
    maps = [r[f"map@{k}"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, layout="constrained")
    p50 = [r["p50_ms"] for r in rows]
    top.plot(cands, p50, "-o", color="tab:blue")
    for c, t in zip(cands, p50):
        top.annotate(f"{t:.3g}", (c, t), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    top.set_ylim(0, max(p50) * 1.2 or 1)
    top.set(
        ylabel="p50 latency per query (ms)",
        title=f"{DIRECTION_TITLES.get(result['direction'], result['direction'])}: "
        f"{result['n_database']:,} items, {result['n_queries']:,} queries, k = {k}",
    )
    bottom.plot(cands, maps, "-s", color="tab:red")
    for c, m in zip(cands, maps):
        bottom.annotate(f"{m:.3f}", (c, m), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    lo, hi = min(maps), max(maps)
    pad = max((hi - lo) * 0.25, 0.005)
    bottom.set_ylim(max(0.0, lo - pad), min(1.0, hi + 2 * pad))
    bottom.set(xlabel="candidates (Hamming shortlist re-ranked by AQD)", ylabel=f"MAP@{k}")
    bottom.set_xscale("log")
    bottom.set_xticks(cands)
    bottom.set_xticklabels([f"{c:,}" for c in cands])
    bottom.xaxis.set_minor_locator(NullLocator())
    bottom.xaxis.set_minor_formatter(NullFormatter())
    if len(cands) > 1:
        bottom.set_xlim(min(cands) / 1.25, max(cands) * 1.25)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    return fig
