"""The suite's PNG charts, drawn by the peers' venv (matplotlib stays out of the test venv)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

CASES = ("pip, cold", "pip, warm", "uv, cold", "uv, warm")


def bars(ax: Any, names: list[str], values: list[float], colors: list[str], title: str) -> None:
    """One horizontal bar panel, each bar labelled with its value."""
    ax.barh(names, values, color=colors)
    ax.set_title(title, fontsize=10)
    ax.invert_yaxis()
    ax.tick_params(labelsize=8)
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:,.0f}", va="center", fontsize=7)


def throughput(data: dict[str, Any], out: Path) -> None:
    """throughput.png: one panel per figure, every target but the install-only ones, and the
    proxy's flat memory."""
    labels, setup = data["labels"], data["setup"]
    skip = data.get("install_only", [])
    results = [r for r in data["results"] if r["target"] not in skip]
    size, big, huge = setup["size_mb"], setup["big_mb"], setup["huge_mb"]
    names = [labels[r["target"]].split(" (")[0] for r in results]
    colors = ["tab:red" if r["target"].startswith("proxy") else "tab:gray" for r in results]
    panels = [
        ("page_rps", "cache-hit page req/s (32 conns)"),
        ("hit_1", f"cached {size} MB wheel, 1 client, MB/s"),
        ("hit_8", f"cached {size} MB wheel, 8 clients, MB/s"),
        ("cold", f"cold fill {size} MB, MB/s"),
        ("hit_1_big", f"cached {big} MB wheel, 1 client, MB/s"),
        ("hit_8_big", f"cached {big} MB wheel, 8 clients, MB/s"),
        ("cold_big", f"cold fill {big} MB, MB/s"),
    ]
    fig, axes = plt.subplots(2, 4, figsize=(18, 6.5))
    for ax, (key, title) in zip(axes.flat, panels, strict=False):
        bars(ax, names, [r[key] for r in results], colors, title)
    memory = data["memory"]
    cases = [
        f"{label}, {phase}" for label in (f"{big} MB", f"{huge} MB") for phase in ("cold", "warm")
    ]
    cases = [case for case in cases if case in memory]
    bars(
        axes.flat[7],
        ["before any file", *cases],
        [memory.get("baseline", 0) / 1e6, *(memory[case] / 1e6 for case in cases)],
        ["tab:red"] * (len(cases) + 1),
        "the proxy's peak RSS, 8 clients, MB",
    )
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=70)


def installs(data: dict[str, Any], out: Path) -> None:
    """installs.png: seconds per install case, grouped by target."""
    results = [r for r in data["results"] if r["installs"]]
    setup = data["setup"]
    fig, ax = plt.subplots(figsize=(9, 4))
    height = 0.8 / len(CASES)
    for n, case in enumerate(CASES):
        ys = [y + n * height for y in range(len(results))]
        ax.barh(ys, [r["installs"].get(case, 0) for r in results], height, label=case)
    ax.set_yticks([y + 0.4 - height / 2 for y in range(len(results))])
    ax.set_yticklabels([data["labels"][r["target"]].split(" (")[0] for r in results], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(
        f"seconds to install a {setup['packages']}-package tree, GitLab {setup['delay_ms']} ms away"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "installs.png", dpi=70)


def memory_over_time(data: dict[str, Any], out: Path) -> None:
    """rss.png: each target's resident memory over its life."""
    fig, ax = plt.subplots(figsize=(11, 4))
    for r in data["results"]:
        if r["rss"]:
            seconds, rss = zip(*r["rss"], strict=True)
            ax.plot(seconds, [b / 1e6 for b in rss], label=data["labels"][r["target"]])
    ax.set_xlabel("seconds since the target started (pages, wheels, cold fills, installs)")
    ax.set_ylabel("resident memory, MB")
    ax.set_yscale("log")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(out / "rss.png", dpi=70)


def main() -> None:
    """argv: the suite's results JSON, the output folder."""
    data = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    throughput(data, out)
    installs(data, out)
    memory_over_time(data, out)


if __name__ == "__main__":
    main()
