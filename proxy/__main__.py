"""Command line: parse flags -> config.load -> app.create_app -> server.run."""

from __future__ import annotations

import argparse
import contextlib
import logging.config
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from proxy import __version__, access, config, metrics, server, tokens
from proxy.cli import bundles as bundle_commands
from proxy.cli import cache as cache_commands
from proxy.cli import tokens as token_commands
from proxy.cli import warm as warm_commands
from proxy.cli.common import PROG
from proxy.errors import ConfigError

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
    for command in (warm_commands, cache_commands, token_commands, bundle_commands):
        command.register(commands)
    return parser


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
        "server_header": False,
        "header_timeout": settings.server.header_timeout,
        "max_connections": settings.server.max_connections,
        "send_timeout": settings.server.send_timeout,
        "http": settings.server.http,
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
