"""`cache stats | verify | prune`: the operator's look at the cache, safe while a proxy runs."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from proxy import maintenance, tally, values
from proxy.cli.common import cache_settings, on_store, options, usage
from proxy.errors import ConfigError


def register(commands: Any) -> None:
    """`cache stats | verify | prune`, each with --config and --cache-dir as serve has them."""
    common = options()
    cache = commands.add_parser(
        "cache",
        help="inspect, check and trim the cache",
        description="Inspect, check and trim the cache of a proxy; safe while it runs.",
    )
    cache.set_defaults(run=lambda args: usage(cache))
    actions = cache.add_subparsers(metavar="ACTION")
    actions.add_parser(
        "stats",
        parents=[common],
        help="files, pinned files, pages and bytes held; hit ratio of the proxies using it",
    ).set_defaults(run=_cache_stats)
    actions.add_parser(
        "verify",
        parents=[common],
        help="re-hash every file; drop and list corrupt ones (exit status 1 if any)",
    ).set_defaults(run=_cache_verify)
    prune = actions.add_parser(
        "prune",
        parents=[common],
        help="remove unpinned files, least recently used first",
        description="Remove unpinned files unused for DAYS, then the least recently used "
        "until all files take at most SIZE. Pinned files are never removed.",
    )
    prune.add_argument("--older-than", metavar="DAYS", help="unused for more than DAYS days")
    prune.add_argument("--to", metavar="SIZE", help='total file size to shrink to, e.g. "10GiB"')
    prune.set_defaults(run=_cache_prune)


def _cache_stats(args: argparse.Namespace) -> int:
    settings = cache_settings(args)
    return on_store(
        settings,
        lambda store: maintenance.stats(
            store,
            sys.stdout,
            max_size=settings.cache.max_size,
            served=tally.recorded(settings.cache.dir),
        ),
    )


def _cache_verify(args: argparse.Namespace) -> int:
    return on_store(cache_settings(args), lambda store: maintenance.verify(store, sys.stdout))


def _cache_prune(args: argparse.Namespace) -> int:
    if args.older_than is None and args.to is None:
        raise ConfigError(
            "cache prune: nothing to do (expected --older-than DAYS, --to SIZE or both)"
        )
    days = None if args.older_than is None else _days(args.older_than)
    size = None if args.to is None else values.parse_size(args.to, where="--to")
    return on_store(
        cache_settings(args),
        lambda store: maintenance.prune(store, sys.stdout, older_than_days=days, to_size=size),
    )


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = math.nan
    if not math.isfinite(days) or days < 0:
        shown = json.dumps(text)
        raise ConfigError(
            f"--older-than: {shown} is not a number of days (expected e.g. 30 or 0.5)"
        )
    return days
