"""The fake GitLab as its own process for the suite: prints its URL and files, ends with stdin."""

from __future__ import annotations

import hashlib
import json
import random
import sys

from harness import PROJECT

from tests.distfactory import make_wheel
from tests.fakegitlab import FakeGitLab


def add_tree(gitlab: FakeGitLab, prefix: str, packages: int) -> str:
    """An app depending on `packages - 1` small wheels, all named after `prefix`; its name."""
    names = [f"{prefix}-dep-{n}" for n in range(packages - 1)]
    app = f"{prefix}-app"
    wheels = [(name, make_wheel(name, "1.0")) for name in names]
    wheels.append((app, make_wheel(app, "1.0", requires=tuple(names))))
    for name, (filename, content) in wheels:
        gitlab.add_file(PROJECT, name, "1.0", filename, content)
    return app


def main() -> None:
    """argv: JSON {"files": {package: size in bytes}, "trees": {prefix: packages}}.

    Prints {"url", "files": {package: {"filename", "sha256"}}, "trees": {prefix: app}}, then
    reads stdin: each line "delay SECONDS" sets GitLab's latency and is answered "ok"; the end
    of stdin stops it."""
    spec = json.loads(sys.argv[1])
    sizes: dict[str, int] = spec["files"]
    largest = max(sizes.values())
    # 16 MiB of noise repeated, each file its own by its last 8 bytes: distinct sha256s, and
    # the noise hashed once per size (made in seconds even for gigabytes; nothing compresses).
    block = random.Random(0).randbytes(16 * 1024 * 1024)
    noise = memoryview(block * (largest // len(block) + 1))
    prefixes = {size: hashlib.sha256(noise[: size - 8]) for size in set(sizes.values())}
    files: dict[str, dict[str, str]] = {}
    with FakeGitLab(max_file_size=largest + 1) as gitlab:
        gitlab.add_project(PROJECT, "tools", visibility="public")
        for number, (name, size) in enumerate(sizes.items()):
            filename = f"{name.replace('-', '_')}-1.0-py3-none-any.whl"
            digest, suffix = prefixes[size].copy(), number.to_bytes(8, "big")
            digest.update(suffix)
            content = b"".join((noise[: size - 8], suffix))
            gitlab.add_file(PROJECT, name, "1.0", filename, content, sha256=digest.hexdigest())
            files[name] = {"filename": filename, "sha256": digest.hexdigest()}
        trees = {prefix: add_tree(gitlab, prefix, n) for prefix, n in spec["trees"].items()}
        print(json.dumps({"url": gitlab.url, "files": files, "trees": trees}), flush=True)
        for line in sys.stdin:
            command, _, value = line.partition(" ")
            if command == "delay":
                gitlab.delay = float(value)
            print("ok", flush=True)


if __name__ == "__main__":
    main()
