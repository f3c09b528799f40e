"""The status page at `/`: HTML (escaped, no inline script or style) or JSON, and its assets."""

from __future__ import annotations

import time
from dataclasses import fields, is_dataclass
from functools import cache, lru_cache
from html import escape
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from proxy.routes import Site
from proxy.status import Credentials, Facts, ScopeFact, Status
from proxy.statusassets import CSS, JS

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "private, no-store",
    "vary": "Accept, Authorization",
}
SHOWN_SCOPES = 12
"""Scopes the HTML lists with their configuration (the JSON lists all)."""
_MODES = {
    "open": "open: anyone who reaches the proxy reads through it",
    "tokens": "tokens: reads need a proxy token",
    "passthrough": "passthrough: each client's own GitLab credentials decide",
}


async def status_page(request: Request) -> Response:
    """The proxy's state for a person (HTML) or a script (`Accept: application/json`)."""
    status: Status = request.state.status
    site: Site = request.state.site
    facts = await status.facts(request.headers.get("authorization"), site.base_url(request))
    accept = request.headers.get("accept", "")
    if "application/json" in accept and "text/html" not in accept:
        return JSONResponse(_plain(facts), headers=HEADERS)
    return Response(render(facts), headers={**HEADERS, "content-type": "text/html; charset=utf-8"})


async def stylesheet(request: Request) -> Response:
    """The page's CSS."""
    return _asset(CSS, "text/css; charset=utf-8")


async def script(request: Request) -> Response:
    """The page's optional refresh script."""
    return _asset(JS, "text/javascript; charset=utf-8")


def _asset(body: bytes, content_type: str) -> Response:
    headers = {"cache-control": "public, max-age=300", "x-content-type-options": "nosniff"}
    return Response(body, headers={**headers, "content-type": content_type})


def routes() -> list[BaseRoute]:
    """The page and its assets (relative links: they work below a public_url's path too)."""
    return [
        Route("/", status_page, methods=["GET", "HEAD"]),
        Route("/-/status.css", stylesheet, methods=["GET", "HEAD"]),
        Route("/-/status.js", script, methods=["GET", "HEAD"]),
    ]


def render(facts: Facts) -> bytes:
    """The page, every value escaped."""
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>gitlab-pypi-proxy</title>",
        '<link rel="stylesheet" href="-/status.css"><script src="-/status.js" defer></script>',
        "</head><body><main>",
        f"<h1>gitlab-pypi-proxy <small>{escape(facts.version)}</small></h1>",
        _state(facts),
        _cache(facts),
        _fills(facts),
        _errors(facts),
        _scopes(facts),
        "</main></body></html>\n",
    ]
    return "".join(parts).encode()


def _state(facts: Facts) -> str:
    heard, now = facts.gitlab, facts.now
    if facts.offline:
        answers = '<span class="muted">not asked: the proxy is offline</span>'
    elif heard.answers is None:
        answers = '<span class="muted">not asked yet</span>'
    elif heard.answers:
        answers = f'<span class="ok">yes</span>, last answer {_ago(now, heard.at)}'
    else:
        answers = (
            f'<span class="bad">no</span>, since {_clock(heard.since)} '
            f"({_ago(now, heard.since)}): {escape(heard.reason)}"
        )
    online = '<span class="bad">offline</span>' if facts.offline else "online"
    return (
        '<section id="state" data-live><dl>'
        f"<dt>GitLab</dt><dd><code>{escape(facts.upstream)}</code></dd>"
        f"<dt>Mode</dt><dd>{online}</dd>"
        f"<dt>GitLab answers</dt><dd>{answers}</dd>"
        f"<dt>Access</dt><dd>{escape(_MODES[facts.mode])}</dd>"
        f"<dt>As of</dt><dd>{_clock(now)} <noscript>(reload to update)</noscript></dd>"
        "</dl></section>"
    )


def _cache(facts: Facts) -> str:
    use, counts = facts.usage, facts.traffic
    share = use.bytes / use.max_size if use.max_size else 0.0
    files = f"{_count(use.files, 'file')} ({use.pinned:,} pinned), {_count(use.pages, 'page')}"
    return (
        '<section id="cache" data-live><h2>Cache</h2>'
        f'<meter min="0" max="{use.max_size}" value="{use.bytes}" low="{use.max_size * 0.8:.0f}" '
        f'high="{use.max_size * 0.95:.0f}" optimum="0"></meter>'
        f"<p>{_size(use.bytes)} of {_size(use.max_size)} ({share:.1%}): {files}</p>"
        f'<h2>Since start <small class="muted">({_clock(facts.started)})</small></h2><dl>'
        f"<dt>File hits</dt><dd>{_ratio(counts.file_hits, counts.file_requests)}</dd>"
        f"<dt>Page hits</dt><dd>{_ratio(counts.page_hits, counts.page_requests)}</dd>"
        f"<dt>From the cache</dt><dd>{_size(counts.bytes_from_cache)}</dd>"
        f"<dt>From GitLab</dt><dd>{_size(counts.bytes_from_gitlab)}</dd>"
        "</dl></section>"
    )


def _fills(facts: Facts) -> str:
    rows = []
    for fill in facts.fills:
        name = escape(fill.filename) if fill.filename else '<span class="muted">a file</span>'
        if fill.length:
            bar = f'<progress max="{fill.length}" value="{fill.written}"></progress>'
            done = (
                f"{_size(fill.written)} of {_size(fill.length)} ({fill.written / fill.length:.0%})"
            )
        else:
            bar, done = "<progress></progress>", _size(fill.written)
        rows.append(f"<li>{name}: {done}{bar}</li>")
    body = f"<ul>{''.join(rows)}</ul>" if rows else '<p class="muted">none</p>'
    return f'<section id="fills" data-live><h2>Downloads in progress</h2>{body}</section>'


def _errors(facts: Facts) -> str:
    if not facts.errors:
        body = '<p class="muted">none since start</p>'
    else:
        rows = "".join(
            f"<tr><td>{_clock(e.at)}</td><td>{escape(e.route)}</td><td>"
            f"{escape(e.line) if e.line is not None else '<span class=muted>(hidden)</span>'}"
            "</td></tr>"
            for e in facts.errors
        )
        body = f"<table><tr><th>time</th><th>route</th><th>error</th></tr>{rows}</table>"
    return f'<section id="errors" data-live><h2>Last errors</h2>{body}</section>'


def _scopes(facts: Facts) -> str:
    shown = "".join(
        _scope(scope, facts.credentials, opened=i == 0)
        for i, scope in enumerate(facts.scopes[:SHOWN_SCOPES])
    )
    notes = []
    if len(facts.scopes) > SHOWN_SCOPES:
        notes.append(f"and {len(facts.scopes) - SHOWN_SCOPES} more (the JSON lists all)")
    if facts.hidden_scopes:
        who = {
            "tokens": "with a proxy token",
            "passthrough": "whose GitLab credentials the proxy saw accepted",
            "open": "",
        }[facts.mode]
        notes.append(f"{facts.hidden_scopes} more, shown to viewers {who}")
    if not facts.scopes and not facts.hidden_scopes:
        notes.append("none cached yet")
    note = "".join(f'<p class="muted">{escape(n)}</p>' for n in notes)
    return f'<section id="scopes"><h2>Indexes</h2>{shown}{note}</section>'


@lru_cache(maxsize=2 * SHOWN_SCOPES)
def _scope(scope: ScopeFact, credentials: Credentials, *, opened: bool) -> str:
    """One scope's index URL and configuration (the same for every request: kept)."""
    url = scope.index_url
    parts = urlsplit(url)
    if credentials == "none":
        pip_url, auth, uv_auth, poetry_auth = url, "", "", ""
    else:
        secret = "<proxy token>" if credentials == "proxy token" else "<GitLab token>"
        pip_url = f"{parts.scheme}://user:{secret}@{parts.netloc}{parts.path}"
        auth = f"credentials: any user name, {secret}"
        uv_auth = f"# {auth}: UV_INDEX_GITLAB_USERNAME=user UV_INDEX_GITLAB_PASSWORD={secret}\n"
        poetry_auth = f"\npoetry config http-basic.gitlab user '{secret}'"
    local = parts.hostname in ("127.0.0.1", "localhost", "::1")
    trusted = f"\ntrusted-host = {parts.hostname}" if parts.scheme == "http" and not local else ""
    uv = f'name = "gitlab"\nurl = "{url}"\ndefault = true'
    blocks = [
        ("pip.conf", f"[global]\nindex-url = {pip_url}{trusted}"),
        ("uv.toml", f"{uv_auth}[[index]]\n{uv}"),
        ("pyproject.toml (uv)", f"[[tool.uv.index]]\n{uv}"),
        ("poetry", f"poetry source add --priority=primary gitlab {url}{poetry_auth}"),
    ]
    configs = "".join(
        f"<h3>{escape(title)}</h3><pre>{escape(text)}</pre>" for title, text in blocks
    )
    return (
        f"<details{' open' if opened else ''}><summary>{escape(scope.scope)}: "
        f'<code class="url">{escape(url)}</code>'
        f"</summary>{configs}</details>"
    )


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def _plain(value: object) -> object:
    """A fact as JSON values (dataclasses.asdict deep-copies every leaf: slower by 5x)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {name: _plain(getattr(value, name)) for name in _names(type(value))}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


@cache
def _names(kind: type) -> tuple[str, ...]:
    return tuple(field.name for field in fields(kind))


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _ratio(hits: int, requests: int) -> str:
    return f"{hits / requests:.1%} of {requests:,}" if requests else "no requests yet"


def _clock(when: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(when))


def _ago(now: float, when: float) -> str:
    seconds = max(0, int(now - when))
    return f"{seconds} s ago" if seconds < 120 else f"{seconds // 60} min ago"
