"""Command line: parse flags -> config.load -> app.create_app -> server.run."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging.config
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from proxy import (
    __version__,
    access,
    bundleimport,
    bundles,
    config,
    maintenance,
    metrics,
    server,
    tally,
    tokens,
    values,
    warming,
)
from proxy.cache import Store
from proxy.errors import BundleError, CacheError, ConfigError, ProxyError
from proxy.grants import Grants
from proxy.models import Scope, valid_scope_id

PROG = "gitlab-pypi-proxy"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"

# serve's flags that override a setting: argparse dest -> "section.key".
_SERVE_OVERRIDES = {
    "upstream": "upstream.url",
    "listen": "server.listen",
    "cache_dir": "cache.dir",
    "offline": "cache.offline",
    "workers": "server.workers",
}


def main(argv: list[str] | None = None) -> int:
    """Run the command in argv (default: sys.argv[1:]) and return its exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        print(f"{PROG} {__version__}")
        return 0
    if args.command is None:
        parser.print_usage(sys.stderr)
        return 2
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="A caching pull-through proxy for GitLab's PyPI package registry."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the proxy",
        description="Run the proxy. Flags override the environment, which overrides "
        "the config file.",
    )
    serve.add_argument(
        "--config", metavar="FILE", help=f"TOML config file (default: ${config.CONFIG_ENV})"
    )
    serve.add_argument("--upstream", metavar="URL", help="GitLab base URL (upstream.url)")
    serve.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (server.listen)")
    serve.add_argument("--cache-dir", metavar="DIR", help="cache directory (cache.dir)")
    serve.add_argument(
        "--offline",
        action="store_const",
        const=True,
        help="never contact GitLab; serve from the cache only (cache.offline)",
    )
    serve.add_argument("--workers", metavar="N", help="server processes (server.workers)")
    serve.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="default: info")
    serve.set_defaults(run=_serve)
    _add_warm_command(commands)
    _add_cache_commands(commands)
    _add_token_commands(commands)
    _add_bundle_commands(commands)
    return parser


def _add_bundle_commands(commands: Any) -> None:
    """`export FILE [--pinned] [--index SCOPE]...` and `import FILE`, reading the cache
    settings as serve does."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="FILE", help=f"TOML config file (default: ${config.CONFIG_ENV})"
    )
    common.add_argument("--cache-dir", metavar="DIR", help="cache directory (cache.dir)")
    export = commands.add_parser(
        "export",
        parents=[common],
        help="write the cache (or part of it) to one bundle file",
        description="Write the cache's files, pages and scope bindings, with a manifest of "
        "every sha256 and size, to FILE (an uncompressed tar; - for standard output). "
        "Records kept per GitLab credential (access.mode = passthrough) are left out.",
    )
    export.add_argument("file", metavar="FILE")
    export.add_argument("--pinned", action="store_true", help="only pinned files")
    export.add_argument(
        "--index",
        metavar="SCOPE",
        action="append",
        default=[],
        help="only files bound to this scope, projects/<id> or groups/<id> (repeatable)",
    )
    export.set_defaults(run=_export)
    imported = commands.add_parser(
        "import",
        parents=[common],
        help="verify a bundle file and merge it into the cache",
        description="Verify every file of the bundle FILE (- for standard input) before "
        "any becomes visible, then merge it into the cache. A bundle that fails is refused "
        "with the list of bad entries, and the cache is unchanged.",
    )
    imported.add_argument("file", metavar="FILE")
    imported.set_defaults(run=_import)


def _add_warm_command(commands: Any) -> None:
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


def _add_token_commands(commands: Any) -> None:
    """`token add NAME | list | revoke NAME`, each with --config and --tokens-file."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="FILE", help=f"TOML config file (default: ${config.CONFIG_ENV})"
    )
    common.add_argument(
        "--tokens-file",
        metavar="FILE",
        help="where token hashes are kept (access.tokens_file; default: "
        "$XDG_CONFIG_HOME/gitlab-pypi-proxy/tokens, else ~/.config/gitlab-pypi-proxy/tokens)",
    )
    token = commands.add_parser(
        "token",
        help="manage proxy tokens (access.mode = tokens)",
        description="Proxy tokens, for access.mode = tokens. A running proxy sees changes "
        "within a second, without a restart.",
    )
    token.set_defaults(run=lambda args: _usage(token))
    actions = token.add_subparsers(metavar="ACTION")
    add = actions.add_parser(
        "add",
        parents=[common],
        help="make a token for NAME, print it once, keep only its hash",
        description="Make a new proxy token for NAME. It is printed once; only its sha256 "
        "is written to access.tokens_file (created with mode 0600 if missing).",
    )
    add.add_argument("name", metavar="NAME")
    add.set_defaults(run=_token_add)
    actions.add_parser(
        "list", parents=[common], help="the names of the tokens, one a line"
    ).set_defaults(run=_token_list)
    revoke = actions.add_parser(
        "revoke",
        parents=[common],
        help="remove NAME's token (exit status 1 if there is none)",
        description="Remove NAME's token from access.tokens_file; a running proxy refuses "
        "it within a second.",
    )
    revoke.add_argument("name", metavar="NAME")
    revoke.set_defaults(run=_token_revoke)


def _tokens_file(args: argparse.Namespace) -> str:
    if args.tokens_file:
        return str(args.tokens_file)
    return config.load(config_file=args.config).access.tokens_file


def _token_add(args: argparse.Namespace) -> int:
    path = _tokens_file(args)
    token = tokens.add_token(path, args.name)
    print(token)
    print(f"{PROG}: stored the hash of {args.name}'s token in {path}", file=sys.stderr)
    return 0


def _token_list(args: argparse.Namespace) -> int:
    path = _tokens_file(args)
    names = tokens.token_names(path)
    for name in names:
        print(name)
    if not names:
        print(f"{PROG}: no tokens in {path}", file=sys.stderr)
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    path = _tokens_file(args)
    if not tokens.revoke_token(path, args.name):
        print(f"{PROG}: token revoke: no token named {args.name!r} in {path}", file=sys.stderr)
        return 1
    print(f"{PROG}: revoked {args.name}'s token in {path}", file=sys.stderr)
    return 0


def _add_cache_commands(commands: Any) -> None:
    """`cache stats | verify | prune`, each with --config and --cache-dir as serve has them."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="FILE", help=f"TOML config file (default: ${config.CONFIG_ENV})"
    )
    common.add_argument("--cache-dir", metavar="DIR", help="cache directory (cache.dir)")
    cache = commands.add_parser(
        "cache",
        help="inspect, check and trim the cache",
        description="Inspect, check and trim the cache of a proxy; safe while it runs.",
    )
    cache.set_defaults(run=lambda args: _usage(cache))
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


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    return 2


def _cache_stats(args: argparse.Namespace) -> int:
    settings = _cache_settings(args)
    return _on_store(
        settings,
        lambda store: maintenance.stats(
            store, sys.stdout, max_size=settings.max_size, served=tally.recorded(settings.dir)
        ),
    )


def _cache_verify(args: argparse.Namespace) -> int:
    return _on_store(_cache_settings(args), lambda store: maintenance.verify(store, sys.stdout))


def _cache_prune(args: argparse.Namespace) -> int:
    if args.older_than is None and args.to is None:
        raise ConfigError(
            "cache prune: nothing to do (expected --older-than DAYS, --to SIZE or both)"
        )
    days = None if args.older_than is None else _days(args.older_than)
    size = None if args.to is None else values.parse_size(args.to, where="--to")
    return _on_store(
        _cache_settings(args),
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


def _cache_settings(args: argparse.Namespace) -> config.CacheSettings:
    return config.load(config_file=args.config, overrides={"cache.dir": args.cache_dir}).cache


def _on_store(settings: config.CacheSettings, action: Callable[[Store], int]) -> int:
    """Run `action` on the Store in cache.dir; a cache that cannot be read is exit status 2."""
    try:
        store = maintenance.open_store(settings)
        try:
            return action(store)
        finally:
            store.close()
    except CacheError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2


def _export(args: argparse.Namespace) -> int:
    scope_keys = tuple(_scope_key(text) for text in args.index)
    progress = bundles.Progress(sys.stderr, verb="export")

    def export(store: Store) -> int:
        exported = bundles.export_to(
            args.file,
            lambda out: bundles.export_bundle(
                store,
                Grants(store.access),
                out,
                pinned_only=args.pinned,
                scope_keys=scope_keys,
                progress=progress,
            ),
        )
        size = maintenance.human_size(exported.bytes)
        print(
            f"exported {exported.files} files ({size}), {exported.pages} pages and "
            f"{exported.bindings} bindings to {args.file}",
            file=sys.stderr if args.file == "-" else sys.stdout,
        )
        return 0

    return _bundle_command("export", _cache_settings(args), export)


def _import(args: argparse.Namespace) -> int:
    progress = bundles.Progress(sys.stderr, verb="import")

    def run(store: Store) -> int:
        with contextlib.ExitStack() as stack:
            source = (
                sys.stdin.buffer if args.file == "-" else stack.enter_context(open(args.file, "rb"))
            )
            done = bundleimport.import_bundle(
                store, Grants(store.access), source, progress=progress
            )
        evicted = f"; {done.evicted} older files evicted to stay under max_size" * bool(
            done.evicted
        )
        print(
            f"imported {done.files} files ({maintenance.human_size(done.bytes)}, "
            f"{done.new_files} new), {done.pages} pages and {done.bindings} bindings{evicted}"
        )
        return 0

    # A laptop's first import makes its cache, as serve would.
    return _bundle_command("import", _cache_settings(args), run, create=True)


def _bundle_command(
    name: str, settings: config.CacheSettings, run: Callable[[Store], int], *, create: bool = False
) -> int:
    """Run export or import: a refusal lists its bad entries (exit status 1); a failure or
    an interruption (SIGINT, SIGTERM) is one line (exit status 1, 130)."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if create:
            settings.dir.mkdir(parents=True, exist_ok=True)
        return _on_store(settings, run)
    except BundleError as exc:
        print(f"{PROG}: {name}: {exc}", file=sys.stderr)
        shown = exc.problems[: bundles.SHOWN_PROBLEMS]
        for problem in shown:
            print(f"  {problem}", file=sys.stderr)
        if len(exc.problems) > len(shown):
            print(f"  ... and {len(exc.problems) - len(shown)} more", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{PROG}: {name}: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: {name}: interrupted; {_INTERRUPTED[name]}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


_INTERRUPTED = {
    "export": "no bundle was written",
    "import": "the cache holds only verified files, and no page or binding without its file",
}


def _scope_key(text: str) -> str:
    kind, _, scope_id = text.strip("/").partition("/")
    if kind not in ("projects", "groups") or not valid_scope_id(scope_id):
        shown = json.dumps(text)
        raise ConfigError(
            f"--index: {shown} is not a scope (expected projects/<id> or groups/<id>, "
            "the id numeric or URL-encoded)"
        )
    return Scope(kind, scope_id).key  # type: ignore[arg-type]


def _serve(args: argparse.Namespace) -> int:
    log_config = _log_config(args.log_level)
    # Before load(), so that its warnings (a token file others can read) are seen.
    logging.config.dictConfig(log_config)
    overrides: dict[str, object] = {
        key: getattr(args, dest)
        for dest, key in _SERVE_OVERRIDES.items()
        if getattr(args, dest) is not None
    }
    settings = config.load(config_file=args.config, overrides=overrides)
    # Refuse a setup that would open GitLab's private packages to a network, and a bad
    # tokens file, before anything listens.
    mode = access.resolve_mode(
        settings.access.mode, host=settings.server.host, service_token=bool(settings.upstream.token)
    )
    if mode == "tokens":
        tokens.read_tokens(settings.access.tokens_file, missing_ok=True)
    options: dict[str, Any] = {
        "host": settings.server.host,
        "port": settings.server.port,
        "log_level": args.log_level,
        "log_config": log_config,
        # The app decides which X-Forwarded-* to believe (server.trusted_proxies).
        "proxy_headers": False,
        # The app keeps its own access log (proxy.access): uvicorn's would print query
        # strings, where a client may have put a token.
        "access_log": False,
        # The server's own bound on a request head (the app answers 431 above 64 KiB).
        "h11_max_incomplete_event_size": 256 * 1024,
        "server_header": False,
        "header_timeout": settings.server.header_timeout,
        "max_connections": settings.server.max_connections,
    }
    if settings.server.workers > 1:
        # Each worker is a fresh process: it rebuilds Settings from the same flags.
        if args.config is not None:
            overrides["config_file"] = os.path.abspath(args.config)
        shared = metrics.shared_between_workers(settings.cache.dir / "metrics")
        shared[config.SERVE_ARGS_ENV] = config.to_overrides_env(overrides)
        with _environment(shared):  # inherited by the worker processes, then put back
            server.run(
                "proxy.app:app_from_environment",
                factory=True,
                workers=settings.server.workers,
                **options,
            )
    else:
        from proxy.app import create_app  # only serve needs the app

        server.run(create_app(settings), **options)
    return 0


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """os.environ with `values` set, restored afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _log_config(level: str) -> dict[str, Any]:
    """Plain lines on stderr from the root logger; uvicorn's loggers propagate to it."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": LOG_FORMAT}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        # Out of descriptors, asyncio logs each failed accept; slow clients are shed by
        # the hundred: a line a minute of each is enough.
        "filters": {"throttle": {"()": "proxy.server.Throttle"}},
        # httpx logs every URL it requests at INFO, presigned object-storage
        # signatures included: keep it to warnings.
        "loggers": {
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
            "asyncio": {"filters": ["throttle"]},
            "proxy.server": {"filters": ["throttle"]},
        },
    }


if __name__ == "__main__":
    sys.exit(main())
