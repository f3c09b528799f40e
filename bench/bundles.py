"""Export and import of a bundle: MB/s and the peak RSS of the `export`/`import` process.

Run from the repository with the test venv: `.venv/bin/python bench/bundles.py`.
Peak RSS is the child's ru_maxrss, which also counts this process's RSS at the fork: so
this process imports only the standard library, and fills the cache in a child of its own.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 1000**2
MiB = 1024**2
ROOT = Path(__file__).resolve().parent.parent


def fill(cache: Path, total: int, file_size: int) -> int:
    """A cache of random files bound to projects/42, `total` bytes in all; returns the count."""
    sys.path.insert(0, str(ROOT))
    from proxy.cache import Store
    from proxy.grants import Grants

    store = Store(cache, max_size=4 * total + 10**9)
    grants = Grants(store.access)
    count = 0
    staged = cache.parent / "staged.part"
    while count * file_size < total:
        content = os.urandom(file_size)
        sha = hashlib.sha256(content).hexdigest()
        staged.write_bytes(content)
        store.put_file(sha, staged)
        grants.bind("projects/42", [(sha, f"pkg{count}-1.0-py3-none-any.whl")])
        count += 1
    staged.unlink()
    store.close()
    return count


def run(*args: str) -> tuple[float, int]:
    """Run `gitlab-pypi-proxy ARGS` as a child; (seconds, its peak RSS in bytes)."""
    command = [sys.executable, "-m", "proxy", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITLAB_PYPI_PROXY_")}
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args[:1])} failed with status {status}")
    return elapsed, usage.ru_maxrss * 1024  # Linux reports KiB


def measure(label: str, total: int, file_size: int, folder: Path) -> None:
    src, bundle, dst = folder / "src", folder / "bundle.tar", folder / "dst"
    filler = [sys.executable, __file__, "--fill", str(src), str(total), str(file_size)]
    files = int(subprocess.run(filler, check=True, capture_output=True, text=True).stdout)
    size = files * file_size
    export_s, export_rss = run("export", str(bundle), "--cache-dir", str(src))
    shutil.rmtree(src)  # keeps the disk used to about twice the bundle
    import_s, import_rss = run("import", str(bundle), "--cache-dir", str(dst))
    bundle_size = bundle.stat().st_size
    print(
        f"{label}: {files} files, {size / MB:,.0f} MB (bundle {bundle_size / MB:,.0f} MB)\n"
        f"  export: {size / MB / export_s:7.1f} MB/s ({export_s:.1f} s), "
        f"peak RSS {export_rss / MiB:.1f} MiB\n"
        f"  import: {size / MB / import_s:7.1f} MB/s ({import_s:.1f} s), "
        f"peak RSS {import_rss / MiB:.1f} MiB",
        flush=True,
    )
    shutil.rmtree(dst)
    bundle.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=1100, help="large bundle (default 1100)")
    parser.add_argument("--small-mb", type=int, default=10, help="small bundle (default 10)")
    parser.add_argument("--file-mb", type=int, default=16, help="size of each file (default 16)")
    parser.add_argument("--fill", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fill:
        print(fill(Path(args.fill[0]), int(args.fill[1]), int(args.fill[2])))
        return
    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(this process: {floor:.1f} MiB, a floor under every peak RSS below)")
    with tempfile.TemporaryDirectory(prefix="bench-bundles-", dir=os.environ.get("TMPDIR")) as tmp:
        measure("small", args.small_mb * MB, min(args.file_mb * MB, args.small_mb * MB), Path(tmp))
        measure("large", args.size_mb * MB, args.file_mb * MB, Path(tmp))


if __name__ == "__main__":
    main()
