"""`warm`: fill and pin the cache for a requirement set, resolved by pip through the proxy."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from proxy import config, warming
from proxy.cli.common import PROG
from proxy.errors import ProxyError


def register(commands: Any) -> None:
    """`warm --index SCOPE [-r FILE]... [REQUIREMENT]... [--platform TAG]...
    [--python-version X.Y]... [--no-pin]`."""
    warm = commands.add_parser(
        "warm",
        help="fill and pin the cache for a requirement set",
        description="Resolve a requirement set with pip through this proxy (started in "
        "this process on a loopback port; no running proxy needed) for each platform and "
        "Python version, and pin every file pip took. uv.lock and pylock.toml given with "
        "-r are not resolved: every file they list is fetched. Exit status 1 if anything "
        "could not be got.",
    )
    warm.add_argument(
        "--config", metavar="FILE", help=f"TOML config file (default: ${config.CONFIG_ENV})"
    )
    warm.add_argument("--upstream", metavar="URL", help="GitLab base URL (upstream.url)")
    warm.add_argument("--cache-dir", metavar="DIR", help="cache directory (cache.dir)")
    warm.add_argument(
        "--index",
        required=True,
        metavar="SCOPE",
        help="projects/<id> or groups/<id>, as in the index URL",
    )
    warm.add_argument(
        "-r",
        "--requirement",
        action="append",
        default=[],
        dest="files",
        metavar="FILE",
        help="a requirements file (hashes allowed), uv.lock or pylock.toml; repeatable",
    )
    warm.add_argument("requirements", nargs="*", metavar="REQUIREMENT")
    warm.add_argument(
        "--platform",
        action="append",
        default=[],
        metavar="TAG",
        help="a platform tag as pip download takes it (wheels only); repeatable",
    )
    warm.add_argument(
        "--python-version",
        action="append",
        default=[],
        metavar="X.Y",
        help="a Python version as pip download takes it (wheels only); repeatable",
    )
    warm.add_argument("--no-pin", action="store_true", help="fill the cache, pin nothing")
    warm.set_defaults(run=_warm)


def _warm(args: argparse.Namespace) -> int:
    overrides = {"upstream.url": args.upstream, "cache.dir": args.cache_dir}
    settings = config.load(config_file=args.config, overrides=overrides)
    request = warming.request(
        args.index,
        args.files,
        args.requirements,
        args.platform,
        args.python_version,
        pin=not args.no_pin,
    )
    try:
        return warming.warm(settings, request, sys.stderr)
    except ProxyError as exc:  # the cache cannot be opened, the proxy does not start
        print(f"{PROG}: warm: {exc}", file=sys.stderr)
        return 2
