"""Proxy tokens: the tokens file, `token add | list | revoke`, and a running proxy following it."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from pathlib import Path

import anyio
import httpx
import pytest
import respx

from proxy import __main__ as cli
from proxy.errors import ConfigError
from proxy.tokens import (
    TokensFile,
    add_token,
    read_tokens,
    revoke_token,
    token_hash,
    token_names,
)
from tests.inproc import GITLAB, Serve

TOKEN = "gpp_s3cr3t-proxy-token-0123456789"
OTHER = "gpp_another-proxy-token-9876543210"
SERVICE = "glpat-s3cr3t-gitlab-token"
PAGE = "/api/v4/projects/42/packages/pypi/simple/my-pkg/"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No GITLAB_PYPI_PROXY_* variable of the developer's leaks in; caches, config and home
    go to tmp_path."""
    for name in list(os.environ):
        if name.startswith("GITLAB_PYPI_PROXY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def mode_of(path: Path) -> int:
    """The permission bits of `path`."""
    return stat.S_IMODE(path.stat().st_mode)


# -- the tokens file ---------------------------------------------------------------------


def test_read_tokens_maps_each_hash_to_its_name(tmp_path: Path) -> None:
    """Each `name:sha256` line becomes {sha256: name}."""
    path = tmp_path / "tokens"
    path.write_text(f"ci:{token_hash(TOKEN)}\nlaptop@alice:{token_hash(OTHER)}\n")
    assert read_tokens(str(path)) == {token_hash(TOKEN): "ci", token_hash(OTHER): "laptop@alice"}


def test_read_tokens_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    """Lines starting with # and blank lines carry no token."""
    path = tmp_path / "tokens"
    path.write_text(f"# made by token add\n\n   \nci:{token_hash(TOKEN)}\n# end\n")
    assert read_tokens(str(path)) == {token_hash(TOKEN): "ci"}


@pytest.mark.parametrize(
    "bad",
    [
        "ci",
        "ci:not-a-hash",
        f"ci:{token_hash(TOKEN)[:63]}",
        f"ci:{token_hash(TOKEN).upper()}",
        f":{token_hash(TOKEN)}",
        f"two words:{token_hash(TOKEN)}",
        TOKEN,
    ],
)
def test_read_tokens_names_the_line_number_of_a_malformed_line(tmp_path: Path, bad: str) -> None:
    """A malformed line stops start-up with one line naming its number and not echoing it."""
    path = tmp_path / "tokens"
    path.write_text(f"# tokens\nci:{token_hash(TOKEN)}\n{bad}\n")
    with pytest.raises(ConfigError) as refused:
        read_tokens(str(path))
    message = str(refused.value)
    assert message.startswith("access.tokens_file: line 3 ")
    assert "\n" not in message
    assert TOKEN not in message


def test_read_tokens_of_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A tokens file that cannot be read stops start-up naming the key."""
    with pytest.raises(ConfigError, match=r"^access\.tokens_file: cannot read"):
        read_tokens(str(tmp_path / "absent"))


def test_add_token_stores_only_the_hash_of_the_token_it_returns(tmp_path: Path) -> None:
    """The file holds `name:sha256(token)` and never the token itself."""
    path = tmp_path / "tokens"
    token = add_token(str(path), "ci")
    text = path.read_text()
    assert text == f"ci:{hashlib.sha256(token.encode()).hexdigest()}\n"
    assert token not in text
    assert read_tokens(str(path)) == {token_hash(token): "ci"}


def test_add_token_gives_a_new_token_each_time(tmp_path: Path) -> None:
    """Two names get two different tokens, both kept."""
    path = tmp_path / "tokens"
    first, second = add_token(str(path), "ci"), add_token(str(path), "laptop")
    assert first != second
    assert read_tokens(str(path)) == {token_hash(first): "ci", token_hash(second): "laptop"}


def test_add_token_creates_the_file_readable_by_its_owner_only(tmp_path: Path) -> None:
    """A new tokens file is mode 0600."""
    path = tmp_path / "tokens"
    add_token(str(path), "ci")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_add_token_refuses_a_name_that_exists(tmp_path: Path) -> None:
    """A second token under the same name is refused and the file is unchanged."""
    path = tmp_path / "tokens"
    add_token(str(path), "ci")
    before = path.read_text()
    with pytest.raises(ConfigError, match="exists already"):
        add_token(str(path), "ci")
    assert path.read_text() == before


@pytest.mark.parametrize(
    "name",
    [
        "",
        "two words",
        "ci:admin",
        "x" * 65,
        "naïve",
        "ci/..",
        "ci\x00",
        "ci\n",
    ],
)
def test_add_token_refuses_a_bad_name(tmp_path: Path, name: str) -> None:
    """A name outside letters, digits and `_ . @ -` (1-64 of them) is refused, nothing written."""
    path = tmp_path / "tokens"
    with pytest.raises(ConfigError, match="is not a name"):
        add_token(str(path), name)
    assert not path.exists()


def test_add_token_without_a_tokens_file_is_refused() -> None:
    """With no access.tokens_file there is nowhere to keep the hash: refused, naming the key."""
    with pytest.raises(ConfigError, match=r"^access\.tokens_file: "):
        add_token("", "ci")


def test_read_tokens_of_a_missing_file_may_be_no_tokens(tmp_path: Path) -> None:
    """With missing_ok a file not made yet holds no tokens (serve before the first token add)."""
    assert read_tokens(str(tmp_path / "absent"), missing_ok=True) == {}


def test_add_token_creates_a_missing_directory_for_its_owner_only(tmp_path: Path) -> None:
    """The tokens file's directory is made with mode 0700 and the file with 0600."""
    path = tmp_path / "config" / "gitlab-pypi-proxy" / "tokens"
    add_token(str(path), "ci")
    assert mode_of(path.parent) == 0o700
    assert mode_of(path) == 0o600


def test_add_token_keeps_the_lines_already_there(tmp_path: Path) -> None:
    """Comments and tokens written before (by hand or an older version) stay as they were."""
    path = tmp_path / "tokens"
    path.write_text(f"# CI tokens\nci:{token_hash(TOKEN)}\n")
    token = add_token(str(path), "laptop")
    assert path.read_text() == f"# CI tokens\nci:{token_hash(TOKEN)}\nlaptop:{token_hash(token)}\n"


def test_token_names_lists_the_names_in_file_order(tmp_path: Path) -> None:
    """Names in the order they were added; comments are not names."""
    path = tmp_path / "tokens"
    path.write_text(f"# tokens\nlaptop@alice:{token_hash(OTHER)}\nci:{token_hash(TOKEN)}\n")
    assert token_names(str(path)) == ["laptop@alice", "ci"]


def test_token_names_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    """No file yet: no names, and no error."""
    assert token_names(str(tmp_path / "absent")) == []


def test_revoke_token_removes_only_that_name(tmp_path: Path) -> None:
    """The named line goes; other tokens and comments stay, and the mode stays 0600."""
    path = tmp_path / "tokens"
    add_token(str(path), "ci")
    laptop = add_token(str(path), "laptop")
    with path.open("a") as out:
        out.write("# kept\n")
    assert revoke_token(str(path), "ci") is True
    assert path.read_text() == f"laptop:{token_hash(laptop)}\n# kept\n"
    assert mode_of(path) == 0o600


def test_revoke_token_replaces_the_file_rather_than_rewriting_it(tmp_path: Path) -> None:
    """A reader holding the old file still sees all of it: revoke renames a new file in place."""
    path = tmp_path / "tokens"
    add_token(str(path), "ci")
    with path.open() as before:
        revoke_token(str(path), "ci")
        assert before.read().startswith("ci:")
    assert token_names(str(path)) == []


def test_revoke_token_of_an_unknown_name_changes_nothing(tmp_path: Path) -> None:
    """No such name: False, and the file is untouched."""
    path = tmp_path / "tokens"
    add_token(str(path), "ci")
    before = path.read_text()
    assert revoke_token(str(path), "laptop") is False
    assert path.read_text() == before


def test_revoke_token_refuses_a_malformed_file(tmp_path: Path) -> None:
    """A file with a line that is no token is reported, not rewritten."""
    path = tmp_path / "tokens"
    path.write_text(f"ci:{token_hash(TOKEN)}\nnot a token\n")
    with pytest.raises(ConfigError, match="line 2"):
        revoke_token(str(path), "ci")
    assert path.read_text() == f"ci:{token_hash(TOKEN)}\nnot a token\n"


# -- TokensFile --------------------------------------------------------------------------


def test_tokens_file_follows_a_revocation_after_its_interval(tmp_path: Path) -> None:
    """A revoked token still counts until the interval has passed, then no longer."""
    path = tmp_path / "tokens"
    token = add_token(str(path), "ci")
    clock = Clock()
    tokens = TokensFile(str(path), interval=1.0, clock=clock)
    assert token_hash(token) in tokens
    revoke_token(str(path), "ci")
    clock.now += 0.5
    assert token_hash(token) in tokens
    clock.now += 0.5
    assert token_hash(token) not in tokens


def test_tokens_file_follows_a_token_added_later(tmp_path: Path) -> None:
    """A file made after start (token add while serving) is read once it appears."""
    path = tmp_path / "tokens"
    clock = Clock()
    tokens = TokensFile(str(path), clock=clock)
    assert len(tokens) == 0
    token = add_token(str(path), "ci")
    clock.now += 1.0
    assert dict(tokens) == {token_hash(token): "ci"}


def test_tokens_file_that_disappears_holds_no_tokens(tmp_path: Path) -> None:
    """Removing the file revokes every token."""
    path = tmp_path / "tokens"
    add_token(str(path), "ci")
    clock = Clock()
    tokens = TokensFile(str(path), clock=clock)
    path.unlink()
    clock.now += 1.0
    assert len(tokens) == 0


def test_tokens_file_that_became_malformed_keeps_the_tokens_read_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bad edit is logged with its line number; the tokens from before stay in force."""
    path = tmp_path / "tokens"
    token = add_token(str(path), "ci")
    clock = Clock()
    tokens = TokensFile(str(path), clock=clock)
    path.write_text(f"ci:{token_hash(token)}\n{TOKEN}\n")
    clock.now += 1.0
    with caplog.at_level(logging.ERROR, logger="proxy.tokens"):
        assert dict(tokens) == {token_hash(token): "ci"}
    assert "line 2" in caplog.text
    assert TOKEN not in caplog.text


def test_tokens_file_repr_shows_no_hash(tmp_path: Path) -> None:
    """repr gives the path and a count, never a token hash."""
    path = tmp_path / "tokens"
    token = add_token(str(path), "ci")
    shown = repr(TokensFile(str(path)))
    assert token_hash(token) not in shown
    assert shown == f"TokensFile({str(path)!r}, tokens=1)"


# -- command line ------------------------------------------------------------------------


def test_token_add_prints_the_token_once_and_nothing_secret_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`token add NAME` prints the token alone on stdout; stderr says where its hash went."""
    path = tmp_path / "tokens"
    assert cli.main(["token", "add", "ci", "--tokens-file", str(path)]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert out == token + "\n"
    assert read_tokens(str(path)) == {token_hash(token): "ci"}
    assert token not in err
    assert token_hash(token) not in err
    assert str(path) in err


def test_token_add_refusal_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A duplicate name exits 2 with one line on stderr and prints no token."""
    path = tmp_path / "tokens"
    cli.main(["token", "add", "ci", "--tokens-file", str(path)])
    capsys.readouterr()
    assert cli.main(["token", "add", "ci", "--tokens-file", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1


def default_tokens(tmp_path: Path) -> Path:
    """Where `token add` writes without configuration, given clean_environment."""
    return tmp_path / "xdg-config" / "gitlab-pypi-proxy" / "tokens"


def test_token_add_without_configuration_writes_to_the_default_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No config and no flag: $XDG_CONFIG_HOME/gitlab-pypi-proxy/tokens, made 0700/0600."""
    assert cli.main(["token", "add", "ci"]) == 0
    token = capsys.readouterr().out.strip()
    path = default_tokens(tmp_path)
    assert read_tokens(str(path)) == {token_hash(token): "ci"}
    assert (mode_of(path.parent), mode_of(path)) == (0o700, 0o600)


def test_token_add_without_xdg_config_home_writes_under_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With XDG_CONFIG_HOME unset the default is ~/.config/gitlab-pypi-proxy/tokens."""
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert cli.main(["token", "add", "ci"]) == 0
    path = tmp_path / "home" / ".config" / "gitlab-pypi-proxy" / "tokens"
    assert read_tokens(str(path)) == {token_hash(capsys.readouterr().out.strip()): "ci"}


def test_token_add_uses_the_tokens_file_of_the_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """access.tokens_file from --config decides where the hash goes."""
    path = tmp_path / "tokens"
    path.touch()
    config = tmp_path / "proxy.toml"
    config.write_text(f"[access]\ntokens_file = {str(path)!r}\n")
    assert cli.main(["token", "add", "ci", "--config", str(config)]) == 0
    assert read_tokens(str(path)) == {token_hash(capsys.readouterr().out.strip()): "ci"}


def test_token_list_prints_one_name_a_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`token list` prints the names, nothing secret and no hash."""
    cli.main(["token", "add", "ci"])
    cli.main(["token", "add", "laptop@alice"])
    capsys.readouterr()
    assert cli.main(["token", "list"]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("ci\nlaptop@alice\n", "")


def test_token_list_of_no_tokens_says_so_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No tokens file yet: nothing on stdout, one line naming the file on stderr, exit 0."""
    assert cli.main(["token", "list"]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"gitlab-pypi-proxy: no tokens in {default_tokens(tmp_path)}\n"


def test_token_revoke_removes_the_name_and_a_second_revoke_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """revoke drops the token (exit 0); revoking it again exits 1 with one line on stderr."""
    cli.main(["token", "add", "ci"])
    cli.main(["token", "add", "laptop"])
    capsys.readouterr()
    assert cli.main(["token", "revoke", "ci"]) == 0
    assert token_names(str(default_tokens(tmp_path))) == ["laptop"]
    capsys.readouterr()
    assert cli.main(["token", "revoke", "ci"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"gitlab-pypi-proxy: token revoke: no token named 'ci' in {default_tokens(tmp_path)}\n"
    )


# -- a running proxy ---------------------------------------------------------------------


@pytest.fixture
def gitlab_knows_nothing(gitlab_api: respx.MockRouter) -> None:
    """GitLab answers every request with 404, so an admitted read is a 404, a refused a 401."""
    gitlab_api.get(url__startswith=GITLAB).respond(404)


async def status_within(client: httpx.AsyncClient, token: str, wanted: int) -> int:
    """The status of reading PAGE with `token`, asked again until it is `wanted` or 5 s pass."""
    deadline = time.monotonic() + 5
    while True:
        status = (await client.get(PAGE, headers={"authorization": f"Bearer {token}"})).status_code
        if status == wanted or time.monotonic() > deadline:
            return status
        await anyio.sleep(0.05)


@pytest.mark.anyio
@pytest.mark.usefixtures("gitlab_knows_nothing")
async def test_a_running_proxy_refuses_a_revoked_token_without_a_restart(
    serve: Serve, tmp_path: Path
) -> None:
    """After `token revoke`, the same proxy answers that token 401 (within about a second)."""
    path = tmp_path / "tokens"
    token, other = add_token(str(path), "ci"), add_token(str(path), "laptop")
    settings = {"access.mode": "tokens", "access.tokens_file": str(path)}
    async with serve(settings, token=SERVICE) as client:
        assert await status_within(client, token, 404) == 404
        assert cli.main(["token", "revoke", "ci", "--tokens-file", str(path)]) == 0
        assert await status_within(client, token, 401) == 401
        assert await status_within(client, other, 404) == 404


@pytest.mark.anyio
@pytest.mark.usefixtures("gitlab_knows_nothing")
async def test_a_proxy_in_tokens_mode_reads_the_default_tokens_file(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`token add` then serve, neither configured: the token is admitted, others are not."""
    # The in-process proxy gets its own environment, without XDG_CONFIG_HOME: both use $HOME.
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert cli.main(["token", "add", "ci"]) == 0
    token = capsys.readouterr().out.strip()
    async with serve({"access.mode": "tokens"}, token=SERVICE) as client:
        assert await status_within(client, token, 404) == 404
        assert await status_within(client, OTHER, 401) == 401
