"""Warm installs through several targets, interleaved round by round, to tell close ones apart.

Run from the repository with the test venv, after `bench/suite.py` installed the peers:
`.venv/bin/python bench/interleaved.py --targets proxpi,devpi,proxy,proxy-off --rounds 7`.
Each target is started once in front of one fake GitLab (100 ms away); each client's tree
is installed through each target once (cold, not counted), then every round installs it
once through every target in turn, so a slow minute of this shared machine costs every
target alike. Prints each target's median and range per client.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

from harness import MB
from installs import install
from targets import HOT, fake_gitlab, start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="proxpi,devpi,proxy,proxy-off")
    parser.add_argument("--clients", default="pip,uv")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--packages", type=int, default=20)
    parser.add_argument("--delay-ms", type=int, default=100)
    parser.add_argument("--peers", type=Path, default=Path("/tmp/gitlab-pypi-proxy-bench-peers"))
    args = parser.parse_args()
    targets, clients = args.targets.split(","), args.clients.split(",")
    trees = {client: args.packages for client in clients}
    with (
        tempfile.TemporaryDirectory() as tmp,
        fake_gitlab({HOT: MB}, trees, Path(tmp), args.peers, 1) as fx,
        ExitStack() as stack,
    ):
        running = {target: stack.enter_context(start(target, fx)) for target in targets}
        fx.set_delay(args.delay_ms / 1000)
        seconds: dict[tuple[str, str], list[float]] = {}
        for client in clients:
            for target in targets:
                index = running[target].index
                if index is None:
                    raise SystemExit(f"{target} has no index clients can install from")
                install(client, index, fx.trees[client])  # cold: the target fills
        for _ in range(args.rounds):
            for client in clients:
                for target in targets:
                    index = running[target].index
                    assert index is not None
                    taken = install(client, index, fx.trees[client])
                    seconds.setdefault((client, target), []).append(taken)
        for (client, target), taken in sorted(seconds.items()):
            print(
                f"{client:4} {target:14} median {statistics.median(taken):.3f} s"
                f"  ({min(taken):.2f}-{max(taken):.2f}, {len(taken)} rounds)"
            )


if __name__ == "__main__":
    main()
