"""`export FILE` and `import FILE`: a verified cache bundle, for machines without a network."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Callable
from typing import Any

from proxy import bundleimport, bundles, maintenance
from proxy.cache import Store
from proxy.cli.common import PROG, cache_settings, on_store, options, scope_key
from proxy.errors import BundleError
from proxy.grants import Grants
from proxy.settings import Settings


def register(commands: Any) -> None:
    """`export FILE [--pinned] [--index SCOPE]...` and `import FILE`, reading the cache
    settings as serve does."""
    common = options()
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


def _export(args: argparse.Namespace) -> int:
    scope_keys = tuple(scope_key(text) for text in args.index)
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

    return _bundle_command("export", cache_settings(args), export)


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
    return _bundle_command("import", cache_settings(args), run, create=True)


def _bundle_command(
    name: str, settings: Settings, run: Callable[[Store], int], *, create: bool = False
) -> int:
    """Run export or import: a refusal lists its bad entries (exit status 1); a failure or
    an interruption (SIGINT, SIGTERM) is one line (exit status 1, 130)."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if create:
            settings.cache.dir.mkdir(parents=True, exist_ok=True)
        return on_store(settings, run)
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
