"""Command line: parse flags -> config.load -> app.create_app -> uvicorn.run."""

from __future__ import annotations

import argparse
import logging.config
import os
import sys
from collections.abc import Callable
from typing import Any

import uvicorn

from proxy import __version__, config
from proxy.errors import ConfigError

PROG = "gitlab-pypi-proxy"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

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
    options: dict[str, Any] = {
        "host": settings.server.host,
        "port": settings.server.port,
        "log_level": args.log_level,
        "log_config": log_config,
        # The app decides which X-Forwarded-* to believe (server.trusted_proxies).
        "proxy_headers": False,
        "server_header": False,
    }
    if settings.server.workers > 1:
        # Each worker is a fresh process: it rebuilds Settings from the same flags.
        if args.config is not None:
            overrides["config_file"] = os.path.abspath(args.config)
        os.environ[config.SERVE_ARGS_ENV] = config.to_overrides_env(overrides)
        uvicorn.run(
            "proxy.app:app_from_environment",
            factory=True,
            workers=settings.server.workers,
            **options,
        )
    else:
        from proxy.app import create_app  # only serve needs the app

        uvicorn.run(create_app(settings), **options)
    return 0


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
        # httpx logs every URL it requests at INFO, presigned object-storage
        # signatures included: keep it to warnings.
        "loggers": {"httpx": {"level": "WARNING"}, "httpcore": {"level": "WARNING"}},
    }


if __name__ == "__main__":
    sys.exit(main())
