"""The fake GitLab as its own process for the suite: prints its URL and files, ends with stdin."""

from __future__ import annotations

import json
import random
import sys

from harness import MB, PROJECT

from tests.fakegitlab import FakeGitLab


def main() -> None:
    """argv: wheel size in MB, then the names of packages that each get their own wheel."""
    size, names = int(sys.argv[1]) * MB, sys.argv[2:]
    files: dict[str, dict[str, str]] = {}
    with FakeGitLab(max_file_size=size + MB) as gitlab:
        gitlab.add_project(PROJECT, "tools", visibility="public")
        for number, name in enumerate(names):
            filename = f"{name.replace('-', '_')}-1.0-py3-none-any.whl"
            content = random.Random(number).randbytes(size)
            sha256 = gitlab.add_file(PROJECT, name, "1.0", filename, content)
            files[name] = {"filename": filename, "sha256": sha256}
        print(json.dumps({"url": gitlab.url, "files": files}), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
