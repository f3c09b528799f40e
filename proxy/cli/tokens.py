"""`token add NAME | list | revoke NAME`: the proxy tokens of access.mode = tokens."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from proxy import config, coordination, tokens
from proxy.cli.common import PROG, options, usage


def register(commands: Any) -> None:
    """`token add NAME | list | revoke NAME`, each with --config and --tokens-file."""
    common = options(cache_dir=False)
    common.add_argument(
        "--tokens-file",
        metavar="FILE",
        help="where token hashes are kept (access.tokens_file; default: "
        "$XDG_CONFIG_HOME/gitlab-pypi-proxy/tokens, else ~/.config/gitlab-pypi-proxy/tokens)",
    )
    token = commands.add_parser(
        "token",
        help="manage proxy tokens (access.mode = tokens)",
        description="Proxy tokens, for access.mode = tokens, kept in access.tokens_file, or in "
        "Redis when coordination.redis_url is set (shared by every replica). A running proxy "
        "sees changes within a second, without a restart.",
    )
    token.set_defaults(run=lambda args: usage(token))
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


def _redis(args: argparse.Namespace) -> str:
    """coordination.redis_url when set (and no --tokens-file): the replicas' tokens live there."""
    if args.tokens_file:
        return ""
    return config.load(config_file=args.config).coordination.redis_url.reveal()


def _token_add(args: argparse.Namespace) -> int:
    if url := _redis(args):
        token, path = coordination.add_token(url, args.name), "Redis"
    else:
        path = _tokens_file(args)
        token = tokens.add_token(path, args.name)
    print(token)
    print(f"{PROG}: stored the hash of {args.name}'s token in {path}", file=sys.stderr)
    return 0


def _token_list(args: argparse.Namespace) -> int:
    url = _redis(args)
    path = "Redis" if url else _tokens_file(args)
    names = coordination.token_names(url) if url else tokens.token_names(path)
    for name in names:
        print(name)
    if not names:
        print(f"{PROG}: no tokens in {path}", file=sys.stderr)
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    url = _redis(args)
    path = "Redis" if url else _tokens_file(args)
    revoked = (
        coordination.revoke_token(url, args.name) if url else tokens.revoke_token(path, args.name)
    )
    if not revoked:
        print(f"{PROG}: token revoke: no token named {args.name!r} in {path}", file=sys.stderr)
        return 1
    print(f"{PROG}: revoked {args.name}'s token in {path}", file=sys.stderr)
    return 0
