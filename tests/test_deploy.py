"""deploy/ holds together: compose file and Kubernetes manifests, and the config they carry."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from proxy.config import load

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
PROXIES = ("proxy-1", "proxy-2", "proxy-3")


def _manifests() -> list[dict[str, Any]]:
    return [
        document
        for path in sorted(KUBERNETES.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def _kind(kind: str) -> dict[str, Any]:
    (found,) = [document for document in _manifests() if document["kind"] == kind]
    return found


def _container() -> dict[str, Any]:
    spec = _kind("Deployment")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return dict(container)


def _compose_default(value: str) -> str:
    """A compose value with `${NAME:-default}` replaced by its default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def _env_file(path: Path) -> dict[str, str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_compose_runs_three_replicas_of_one_service_behind_nginx() -> None:
    """docker-compose.yml has three proxy replicas, Redis, MinIO and nginx balancing over
    all three."""
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    assert {*PROXIES, "lb", "redis", "minio"} <= set(services)
    assert all(services[name] == services["proxy-1"] for name in PROXIES)
    upstreams = re.findall(r"server (proxy-\d):8080", (DEPLOY / "nginx.conf").read_text())
    assert sorted(upstreams) == list(PROXIES)


def test_compose_environment_loads_with_every_key_valid() -> None:
    """The replicas' environment (env.example plus the compose file's) loads as settings:
    s3 storage and Redis coordination, no unknown variable."""
    proxy = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["proxy-1"]
    env = _env_file(DEPLOY / "env.example")
    env |= {key: _compose_default(str(value)) for key, value in proxy["environment"].items()}
    settings = load(env=env)
    assert settings.storage.backend == "s3"
    assert settings.coordination.redis_url.reveal() == "redis://redis:6379/0"


def test_kubernetes_runs_three_ready_checked_replicas_without_persistent_volumes() -> None:
    """The Deployment has three replicas, a readiness probe on /-/ready, and no manifest
    asks for a PersistentVolume or a claim on one."""
    deployment = _kind("Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert _container()["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    kinds = {document["kind"] for document in _manifests()}
    assert not kinds & {"PersistentVolume", "PersistentVolumeClaim", "StatefulSet"}
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert not [volume for volume in volumes if "persistentVolumeClaim" in volume]


def test_kubernetes_config_map_and_environment_load_with_every_key_valid(tmp_path: Path) -> None:
    """The ConfigMap's config.toml, with the Deployment's environment (secrets from the
    example Secret), loads as settings: s3 storage and Redis coordination."""
    config = tmp_path / "config.toml"
    config.write_text(_kind("ConfigMap")["data"]["config.toml"])
    secrets = _kind("Secret")["stringData"]
    env: dict[str, str] = {}
    for variable in _container()["env"]:
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            env[variable["name"]] = secrets[variable["valueFrom"]["secretKeyRef"]["key"]]
    assert env.pop("GITLAB_PYPI_PROXY_CONFIG") == "/etc/gitlab-pypi-proxy/config.toml"
    settings = load(config_file=config, env=env)
    assert settings.storage.backend == "s3"
    assert settings.storage.url == "s3://pypi-cache/files"
    assert settings.coordination.redis_url.reveal().startswith("redis://")
