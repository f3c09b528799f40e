"""Public index pages read for followed forwarding: the files they list, with their keys."""

from __future__ import annotations

import json

from proxy.pages import JSON_TYPE
from proxy.publicpages import PublicFile, parse_public


def test_public_html_page_gives_files_with_their_attributes() -> None:
    """A PEP 503 page: relative links resolved, sha256 fragments, requires-python, PEP 592
    yanked and PEP 658/714 core metadata read; a link without a hash has no sha256."""
    body = (
        f'<a href="../../packages/x-1.whl#sha256={"A" * 64}" data-requires-python="&gt;=3.8"'
        f' data-yanked="bad" data-core-metadata="sha256={"b" * 64}">x-1.whl</a>'
        '<a href="https://files.example/x-1.tar.gz">x-1.tar.gz</a>'
    ).encode()
    wheel, sdist = parse_public(
        body, content_type="text/html", page_url="https://pypi.example/simple/x/"
    )
    assert wheel == PublicFile(
        "https://pypi.example/packages/x-1.whl",
        "x-1.whl",
        "a" * 64,
        requires_python=">=3.8",
        yanked="bad",
        metadata="b" * 64,
    )
    assert (sdist.url, sdist.sha256, sdist.metadata) == (
        "https://files.example/x-1.tar.gz",
        None,
        None,
    )


def test_public_json_page_gives_pep_700_keys() -> None:
    """A PEP 691 page: hashes, yanked true, core-metadata true (no hash), upload-time, size."""
    entry = {
        "filename": "x-1.whl",
        "url": "https://files.example/x-1.whl",
        "hashes": {"sha256": "c" * 64},
        "yanked": True,
        "core-metadata": True,
        "upload-time": "2024-01-02T03:04:05Z",
        "size": 12,
    }
    (file,) = parse_public(
        json.dumps({"files": [entry]}).encode(),
        content_type=JSON_TYPE,
        page_url="https://pypi.example/simple/x/",
    )
    assert (file.sha256, file.yanked, file.metadata, file.upload_time, file.size) == (
        "c" * 64,
        "",
        "",
        "2024-01-02T03:04:05Z",
        12,
    )


def test_public_html_base_element_resolves_relative_links() -> None:
    """A public page's <base href> changes what its relative links resolve against."""
    body = b'<base href="https://files.example/x/"><a href="x-1.whl">x-1.whl</a>'
    (file,) = parse_public(
        body, content_type="text/html", page_url="https://pypi.example/simple/x/"
    )
    assert file.url == "https://files.example/x/x-1.whl"
