"""The suite's PNG charts, drawn by the peers' venv (matplotlib stays out of the test venv)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main() -> None:
    """argv: the suite's results JSON, the output folder."""
    data = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    results, labels, size = data["results"], data["labels"], data["size_mb"]
    names = [labels[r["target"]].split(" (")[0] for r in results]
    colors = ["tab:red" if r["target"] == "proxy" else "tab:gray" for r in results]
    panels = [
        ("page_rps", "cache-hit page req/s (32 conns)"),
        ("hit_1", f"cached {size} MB wheel, 1 client, MB/s"),
        ("hit_8", f"cached {size} MB wheel, 8 clients, MB/s"),
        ("cold", f"cold fill {size} MB, MB/s"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        values = [r[key] for r in results]
        ax.barh(names, values, color=colors)
        ax.set_title(title, fontsize=10)
        ax.invert_yaxis()
        ax.tick_params(labelsize=8)
        for y, value in enumerate(values):
            ax.text(value, y, f" {value:,.0f}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=70)
    fig, ax = plt.subplots(figsize=(8, 4))
    for r, name in zip(results, names, strict=True):
        if r["rss"]:
            seconds, rss = zip(*r["rss"], strict=True)
            ax.plot(seconds, [b / 1e6 for b in rss], label=name)
    ax.set_xlabel("seconds since the target started (pages, then wheels, then cold fill)")
    ax.set_ylabel("resident memory, MB")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "rss.png", dpi=70)


if __name__ == "__main__":
    main()
