"""The command line: flags reach Settings, errors become one line and exit status 2."""

from __future__ import annotations

import logging
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import uvicorn

import proxy
from proxy import __main__ as cli
from proxy.config import SERVE_ARGS_ENV, from_overrides_env, load_for_workers
from proxy.settings import Settings

TOKEN = "glpat-s3cr3t-t0k3n-value"


class Recorder:
    """Stands in for uvicorn.run and proxy.app.create_app, keeping what they were given."""

    def __init__(self) -> None:
        self.app: object = None
        self.options: dict[str, Any] = {}
        self.settings: Settings | None = None
        self.environ: dict[str, str] = {}

    def run(self, app: object, **options: Any) -> None:
        self.app, self.options = app, options
        self.environ = dict(os.environ)  # what worker processes would inherit

    def create_app(self, settings: Settings) -> object:
        self.settings = settings
        return "the app"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No GITLAB_PYPI_PROXY_* variable of the developer's leaks in; caches go to tmp_path."""
    for name in list(os.environ):
        if name.startswith("GITLAB_PYPI_PROXY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    # serve writes this for worker processes; setting it first makes monkeypatch undo it.
    monkeypatch.setenv(SERVE_ARGS_ENV, "{}")


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """uvicorn.run and proxy.app are replaced, so no server starts."""
    recorder = Recorder()
    monkeypatch.setattr(uvicorn, "run", recorder.run)
    fake_app = types.ModuleType("proxy.app")
    fake_app.create_app = recorder.create_app  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "proxy.app", fake_app)
    return recorder


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the program name and version and exits 0."""
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"gitlab-pypi-proxy {proxy.__version__}\n"


def test_no_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a command, the usage goes to stderr and the exit status is 2."""
    assert cli.main([]) == 2
    assert capsys.readouterr().err.startswith("usage: gitlab-pypi-proxy")


def test_bad_upstream_is_one_line_and_exit_2(
    recorder: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad flag value stops serve with exit 2 and one line on stderr, no traceback."""
    assert cli.main(["serve", "--upstream", "ftp://x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith('gitlab-pypi-proxy: upstream.url: "ftp://x" is not')
    assert err.count("\n") == 1
    assert recorder.options == {}


def test_bad_config_file_is_one_line_and_exit_2(
    tmp_path: Path, recorder: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing --config file stops serve with exit 2 and one line on stderr."""
    assert cli.main(["serve", "--config", str(tmp_path / "absent.toml")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_serve_runs_the_app_on_the_listen_address(recorder: Recorder) -> None:
    """serve builds the app from Settings and runs it where --listen says."""
    assert cli.main(["serve", "--listen", "0.0.0.0:9000"]) == 0
    assert recorder.app == "the app"
    assert recorder.options["host"] == "0.0.0.0"
    assert recorder.options["port"] == 9000


def test_serve_leaves_forwarded_headers_and_server_header_off(recorder: Recorder) -> None:
    """uvicorn neither believes X-Forwarded-* itself nor adds a Server header."""
    cli.main(["serve"])
    assert recorder.options["proxy_headers"] is False
    assert recorder.options["server_header"] is False


def test_serve_passes_the_log_level(recorder: Recorder) -> None:
    """--log-level reaches uvicorn and the root logger."""
    cli.main(["serve", "--log-level", "debug"])
    assert recorder.options["log_level"] == "debug"
    assert logging.getLogger().level == logging.DEBUG


@pytest.mark.parametrize(
    ("flags", "attribute", "expected"),
    [
        (["--upstream", "https://gitlab.example/root/"], "upstream.url",
         "https://gitlab.example/root"),
        (["--listen", "[::1]:8081"], "server.port", 8081),
        (["--cache-dir", "/srv/proxy-cache"], "cache.dir", Path("/srv/proxy-cache")),
        (["--offline"], "cache.offline", True),
        ([], "cache.offline", False),
    ],
)  # fmt: skip
def test_serve_flags_set_their_settings(
    recorder: Recorder, flags: list[str], attribute: str, expected: object
) -> None:
    """Each serve flag sets the setting it names."""
    cli.main(["serve", *flags])
    section, key = attribute.split(".")
    assert getattr(getattr(recorder.settings, section), key) == expected


def test_flag_beats_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    """--upstream wins over $GITLAB_PYPI_PROXY_UPSTREAM_URL and the --config file."""
    config = tmp_path / "proxy.toml"
    config.write_text('[upstream]\nurl = "https://file.example"\n')
    monkeypatch.setenv("GITLAB_PYPI_PROXY_UPSTREAM_URL", "https://env.example")
    cli.main(["serve", "--config", str(config), "--upstream", "https://flag.example"])
    assert recorder.settings is not None
    assert recorder.settings.upstream.url == "https://flag.example"


def test_workers_run_the_factory_with_the_flags_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    """With --workers N, uvicorn gets the app factory and the flags travel in the environment."""
    monkeypatch.chdir(tmp_path)
    Path("proxy.toml").write_text('[cache]\nmax_size = "1GiB"\n')
    assert cli.main(["serve", "--config", "proxy.toml", "--workers", "3", "--offline"]) == 0
    assert recorder.app == "proxy.app:app_from_environment"
    assert recorder.options["factory"] is True
    assert recorder.options["workers"] == 3
    assert from_overrides_env(recorder.environ[SERVE_ARGS_ENV]) == {
        "config_file": str(tmp_path / "proxy.toml"),
        "server.workers": "3",
        "cache.offline": True,
    }
    assert recorder.environ["PROMETHEUS_MULTIPROC_DIR"].endswith("metrics")
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ  # put back once serve returns


def test_workers_rebuild_the_same_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    """What a worker process loads equals what serve itself loaded."""
    config = tmp_path / "proxy.toml"
    config.write_text('[cache]\nmax_size = "1GiB"\n')
    monkeypatch.setenv("GITLAB_PYPI_PROXY_TOKEN", TOKEN)
    cli.main(
        ["serve", "--config", str(config), "--workers", "2", "--upstream", "https://x.example"]
    )
    in_worker = load_for_workers(recorder.environ)
    assert in_worker.cache.max_size == 1024**3
    assert in_worker.upstream.url == "https://x.example"
    assert in_worker.server.workers == 2
    assert TOKEN not in recorder.environ[SERVE_ARGS_ENV]


def test_serve_never_prints_the_token(
    monkeypatch: pytest.MonkeyPatch, recorder: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    """Neither stdout nor stderr of serve, at debug level, contains the token."""
    monkeypatch.setenv("GITLAB_PYPI_PROXY_TOKEN", TOKEN)
    cli.main(["serve", "--log-level", "debug"])
    out, err = capsys.readouterr()
    assert TOKEN not in out + err


def test_serve_in_tokens_mode_starts_before_the_first_token_add(
    recorder: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tokens mode with the default tokens file not made yet: serve starts (every read is a 401
    until `token add`, which the running proxy then sees)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("GITLAB_PYPI_PROXY_ACCESS_MODE", "tokens")
    assert cli.main(["serve"]) == 0
    assert recorder.settings is not None
    assert recorder.settings.access.tokens_file == str(tmp_path / "config/gitlab-pypi-proxy/tokens")
    assert recorder.app == "the app"
