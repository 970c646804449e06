"""Pictures of evaluation and benchmark results (matplotlib, the ``plot`` extra, imported only here).

- :func:`eval_figure`: precision–recall curves for image→text and text→image (one line per
  model) and MAP@50 by code length for each ranking (``hqdb eval --plot``);
- :func:`bench_figure`: search latency against the number of candidates, with MAP on a second
  axis — the shape of the HQ paper's Figure 4 (``hqdb bench --plot``).
"""

from __future__ import annotations

DIRECTION_TITLES = {"i2t": "image → text", "t2i": "text → image"}
RANKING_STYLES = {"two_stage": "-o", "hamming": "--s", "aqd": ":^", "lossless": "-.d"}


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'hqdb[plot]'", name="matplotlib") from e
    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def eval_figure(results: list[dict], curves: dict, path: str) -> None:
    """``results``: :func:`hqdb.evaluate.evaluate` outputs (one per model); ``curves``: per model
    name, per direction, ``{"precision": [...], "recall": [...]}``. Writes a 2 x 2 figure."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    for col, direction in enumerate(("i2t", "t2i")):
        ax = axes[0, col]
        for r in results:
            c = curves.get(r["model"], {}).get(direction)
            if c:
                ax.plot(c["recall"], c["precision"], label=f"{r['model']} ({r['bits']} bits)")
        ax.set(
            title=f"precision–recall, {DIRECTION_TITLES[direction]}",
            xlabel="recall",
            ylabel="precision",
            xlim=(0, 1),
            ylim=(0, 1.02),
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax = axes[1, col]
        with_dir = sorted((r for r in results if direction in r), key=lambda r: r["bits"])
        bits = [r["bits"] for r in with_dir]
        for ranking, style in RANKING_STYLES.items():
            values = [r[direction][ranking]["map@50"] for r in with_dir if ranking in r[direction]]
            if len(values) == len(bits) and bits:
                ax.plot(bits, values, style, label=ranking.replace("_", "-"))
        ax.set(title=f"MAP@50 by code length, {DIRECTION_TITLES[direction]}", xlabel="bits", ylabel="MAP@50")
        if bits:
            ax.set_xticks(sorted(set(bits)))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def bench_figure(result: dict, path: str) -> None:
    """``result``: the dict ``hqdb bench --json`` prints. Latency (p50, log-scaled candidates) on
    the left axis, MAP@k on the right."""
    plt = _pyplot()
    rows = result["rows"]
    k = result["k"]
    cands = [r["candidates"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(cands, [r["p50_ms"] for r in rows], "-o", color="tab:blue", label="p50 latency")
    ax.set_xscale("log")
    ax.set(
        xlabel="candidates (Hamming shortlist re-ranked by AQD)",
        ylabel="p50 latency per query (ms)",
        title=f"{DIRECTION_TITLES.get(result['direction'], result['direction'])}: "
        f"{result['n_database']} items, k = {k}",
    )
    ax.tick_params(axis="y", labelcolor="tab:blue")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(cands, [r[f"map@{k}"] for r in rows], "-s", color="tab:red", label=f"MAP@{k}")
    ax2.set_ylabel(f"MAP@{k}")
    ax2.tick_params(axis="y", labelcolor="tab:red")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
