"""The suite's install figures: `pip install` and `uv pip install` of a package tree, timed."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.clients import new_venv, pip_install, uv_install

CLIENTS = ("pip", "uv")  # each installs its own tree, so both find the target cold


def install(client: str, index: str, app: str) -> float:
    """Seconds `client` takes to install `app` from `index` into a new venv, with a cold
    client cache (pip: none; uv: a new folder); fails on a failed install."""
    with tempfile.TemporaryDirectory(prefix="bench-install-") as tmp:
        scratch = Path(tmp)
        python = new_venv(scratch / "venv")
        started = time.perf_counter()
        if client == "pip":
            result = pip_install(python, index, app)
        else:
            result = uv_install(python, index, app, cache=scratch / "uv-cache")
        seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{client} install from {index} failed: {result.stderr[-500:]}")
    return seconds


def installs(
    index: str,
    trees: dict[str, str],
    set_delay: Callable[[float], None],
    *,
    delay: float,
    runs: int,
) -> dict[str, float]:
    """Each client's first install through a target that never saw the tree ("pip, cold"),
    then the median of `runs` more ("pip, warm"), with GitLab answering after `delay` s."""
    found: dict[str, float] = {}
    set_delay(delay)
    try:
        for client in CLIENTS:
            found[f"{client}, cold"] = install(client, index, trees[client])
            warm = [install(client, index, trees[client]) for _ in range(runs)]
            found[f"{client}, warm"] = statistics.median(warm)
    finally:
        set_delay(0.0)
    return found
