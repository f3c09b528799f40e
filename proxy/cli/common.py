"""What the command line's subcommands share: options, the cache, scopes, exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from proxy import config, maintenance
from proxy.cache import Store
from proxy.errors import CacheError, ConfigError
from proxy.models import Scope, valid_scope_id
from proxy.settings import Settings

PROG = "gitlab-pypi-proxy"


def options(*, cache_dir: bool = True) -> argparse.ArgumentParser:
    """A parent parser with --config (and --cache-dir), read as serve reads them."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="FILE", help=f"TOML config file (default: ${config.CONFIG_ENV})"
    )
    if cache_dir:
        common.add_argument("--cache-dir", metavar="DIR", help="cache directory (cache.dir)")
    return common


def usage(parser: argparse.ArgumentParser) -> int:
    """A command without its action: print the usage, exit status 2."""
    parser.print_usage(sys.stderr)
    return 2


def cache_settings(args: argparse.Namespace) -> Settings:
    """The settings of --config and --cache-dir, the environment and defaults."""
    return config.load(config_file=args.config, overrides={"cache.dir": args.cache_dir})


def on_store(settings: Settings, action: Callable[[Store], int]) -> int:
    """Run `action` on the Store in cache.dir (its files where settings.storage says); a
    cache that cannot be read is exit status 2."""
    try:
        store = maintenance.open_store(settings)
        try:
            return action(store)
        finally:
            store.close()
    except CacheError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2


def scope_key(text: str) -> str:
    """The cache key of a SCOPE written as in URLs: projects/<id> or groups/<id>."""
    kind, _, scope_id = text.strip("/").partition("/")
    if kind not in ("projects", "groups") or not valid_scope_id(scope_id):
        shown = json.dumps(text)
        raise ConfigError(
            f"--index: {shown} is not a scope (expected projects/<id> or groups/<id>, "
            "the id numeric or URL-encoded)"
        )
    return Scope(kind, scope_id).key  # type: ignore[arg-type]
