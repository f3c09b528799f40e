"""GitLab's simple pages byte for byte (design section 2), and the pages they parse to."""

from __future__ import annotations

from dataclasses import replace

from proxy.models import Link, Page

GITLAB = "https://gitlab.example.com/gitlab"
PROXY = "http://127.0.0.1:8080"
API = "/api/v4/projects/42/packages/pypi"
SHA_WHL = "a48cb22fe1d88b36a218da85a7e70278fe8a8e99e66d0569af1c9b442016612d"
SHA_SDIST = "65f274f555082dce683fa341e3b75521cfbaae4cffd988ecafa536ed48f7747a"
PACKAGE_URL = f"{GITLAB}{API}/simple/my-pkg"
INDEX_URL = f"{GITLAB}{API}/simple"
HTML = "text/html; charset=utf-8"
JSON = "application/vnd.pypi.simple.v1+json; charset=utf-8"

# GitLab's template, byte for byte (section 2.2): 8/10/12-space indentation, links on one line.
GITLAB_PACKAGE_PAGE = (
    b"<!DOCTYPE html>\n"
    b"        <html>\n"
    b"          <head>\n"
    b"            <title>Links for my-pkg</title>\n"
    b"          </head>\n"
    b"          <body>\n"
    b"            <h1>Links for my-pkg</h1>\n"
    b'            <a href="https://gitlab.example.com/gitlab/api/v4/projects/42/packages/pypi/'
    b"files/a48cb22fe1d88b36a218da85a7e70278fe8a8e99e66d0569af1c9b442016612d/"
    b"my_pkg-1.0-py3-none-any.whl#sha256="
    b'a48cb22fe1d88b36a218da85a7e70278fe8a8e99e66d0569af1c9b442016612d" '
    b'data-requires-python="&gt;=3.8">my_pkg-1.0-py3-none-any.whl</a>'
    b'<a href="https://gitlab.example.com/gitlab/api/v4/projects/42/packages/pypi/'
    b"files/65f274f555082dce683fa341e3b75521cfbaae4cffd988ecafa536ed48f7747a/"
    b"my_pkg-1.0+local.tar.gz#sha256="
    b'65f274f555082dce683fa341e3b75521cfbaae4cffd988ecafa536ed48f7747a" '
    b'data-requires-python="">my_pkg-1.0+local.tar.gz</a>\n'
    b"          </body>\n"
    b"        </html>\n"
)
GITLAB_PACKAGE = Page(
    title="Links for my-pkg",
    links=(
        Link(
            f"{API}/files/{SHA_WHL}/my_pkg-1.0-py3-none-any.whl",
            "my_pkg-1.0-py3-none-any.whl",
            f"sha256={SHA_WHL}",
            (("data-requires-python", ">=3.8"),),
        ),
        Link(
            f"{API}/files/{SHA_SDIST}/my_pkg-1.0+local.tar.gz",
            "my_pkg-1.0+local.tar.gz",
            f"sha256={SHA_SDIST}",
            (("data-requires-python", ""),),
        ),
    ),
)

# The index: display name in the title, one anchor per version, no trailing slash (2.3).
GITLAB_INDEX_PAGE = (
    b"<!DOCTYPE html>\n"
    b"        <html>\n"
    b"          <head>\n"
    b"            <title>Links for My Project</title>\n"
    b"          </head>\n"
    b"          <body>\n"
    b"            <h1>Links for My Project</h1>\n"
    b'            <a href="https://gitlab.example.com/gitlab/api/v4/projects/42/packages/pypi/'
    b'simple/my-package" data-requires-python="&gt;=2.7, !=3.0">My_Package</a>'
    b'<a href="https://gitlab.example.com/gitlab/api/v4/projects/42/packages/pypi/'
    b'simple/my-package" data-requires-python="">My_Package</a>\n'
    b"          </body>\n"
    b"        </html>\n"
)

GITLAB_EMPTY_PAGE = (
    b"<!DOCTYPE html>\n"
    b"        <html>\n"
    b"          <head>\n"
    b"            <title>Links for My Project</title>\n"
    b"          </head>\n"
    b"          <body>\n"
    b"            <h1>Links for My Project</h1>\n"
    b"            \n"
    b"          </body>\n"
    b"        </html>\n"
)


# GitLab's PEP 691 page (section 2.5): compact, url with fragment, requires-python if set.
GITLAB_JSON_PACKAGE_PAGE = (
    b'{"meta":{"api-version":"1.0"},"name":"my-pkg","files":['
    b'{"filename":"my_pkg-1.0-py3-none-any.whl","url":"https://gitlab.example.com/gitlab/api/v4/'
    b"projects/42/packages/pypi/files/a48cb22fe1d88b36a218da85a7e70278fe8a8e99e66d0569af1c9b442016612d"
    b"/my_pkg-1.0-py3-none-any.whl#sha256="
    b'a48cb22fe1d88b36a218da85a7e70278fe8a8e99e66d0569af1c9b442016612d","hashes":{"sha256":'
    b'"a48cb22fe1d88b36a218da85a7e70278fe8a8e99e66d0569af1c9b442016612d"},"requires-python":">=3.8"},'
    b'{"filename":"my_pkg-1.0+local.tar.gz","url":"https://gitlab.example.com/gitlab/api/v4/'
    b"projects/42/packages/pypi/files/65f274f555082dce683fa341e3b75521cfbaae4cffd988ecafa536ed48f7747a"
    b"/my_pkg-1.0+local.tar.gz#sha256="
    b'65f274f555082dce683fa341e3b75521cfbaae4cffd988ecafa536ed48f7747a","hashes":{"sha256":'
    b'"65f274f555082dce683fa341e3b75521cfbaae4cffd988ecafa536ed48f7747a"}}]}'
)
GITLAB_JSON_PACKAGE = replace(
    GITLAB_PACKAGE,
    links=(GITLAB_PACKAGE.links[0], replace(GITLAB_PACKAGE.links[1], attrs=())),
    json=True,
)
