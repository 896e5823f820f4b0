"""compose.yaml (the fleet example: no Docker on the test machines, so it is never started here) against
the code: its darkroom settings exist and load, its hosts listen where the balancer looks, their data
volume is the image's data dir, and every service, volume and dependency it names is defined."""

from __future__ import annotations

import re
from typing import Any

import yaml

from server.settings import PROJECT_ROOT, describe, load_settings

COMPOSE = yaml.safe_load((PROJECT_ROOT / "compose.yaml").read_text())
DOCKERFILE = (PROJECT_ROOT / "Dockerfile").read_text()
HOSTS = {name: service for name, service in COMPOSE["services"].items() if service.get("build") == "."}


def expanded(value: Any) -> str:
    """A value as compose hands it over: ``${X:-default}`` its default, ``${X:?why}`` a stand-in."""
    return re.sub(
        r"\$\{(\w+)(?::-([^}]*)|:\?[^}]*)\}", lambda m: m[2] if m[2] is not None else m[1].lower(), str(value)
    )


def image_env() -> dict[str, str]:
    """The ENV the image runs with: its last stage's (the first builds it)."""
    final = DOCKERFILE.rsplit("\nFROM ", 1)[-1]
    blocks = re.findall(r"^ENV ((?:.*\\\n)*.*)$", final, flags=re.M)
    assert blocks, "the Dockerfile's last stage sets no ENV"
    return {key: value for block in blocks for key, value in re.findall(r"(\w+)=(\S+)", block)}


def test_its_darkroom_settings_exist_and_load_as_a_fleet() -> None:
    assert len(HOSTS) >= 2, "a fleet example with fewer than two hosts"
    declared = {name for name, _, _ in describe()}
    for name, service in HOSTS.items():
        env = {key: expanded(value) for key, value in service["environment"].items()}
        assert {key for key in env if key.startswith("DARKROOM_")} <= declared, name
        settings = load_settings({**image_env(), **env})
        assert settings.database_url.startswith("postgresql://") and "@postgres:" in settings.database_url
        assert settings.storage_url.startswith("s3://") and env["AWS_ENDPOINT_URL"] == "http://minio:9000"


def test_the_balancer_reaches_every_host_where_it_listens() -> None:
    settings = load_settings(image_env())
    assert settings.host == "0.0.0.0", "a host in a container must listen beyond its loopback"
    assert f"EXPOSE {settings.port}" in DOCKERFILE
    command = COMPOSE["services"]["balancer"]["command"]
    assert sorted(re.findall(r"--to (\S+)", command)) == sorted(f"{name}:{settings.port}" for name in HOSTS)


def test_each_host_keeps_its_data_dir_in_its_own_volume() -> None:
    data_dir = image_env()["DARKROOM_DATA_DIR"]
    mounts = [volume for service in HOSTS.values() for volume in service["volumes"]]
    assert all(mount.endswith(f":{data_dir}") for mount in mounts), mounts
    assert len({mount.split(":")[0] for mount in mounts}) == len(HOSTS), "two hosts share a data volume"


def test_every_service_volume_and_dependency_it_names_is_defined() -> None:
    services, volumes = COMPOSE["services"], set(COMPOSE["volumes"])
    for name, service in services.items():
        assert set(service.get("depends_on", ())) <= set(services), name
        for mount in service.get("volumes", ()):
            assert mount.split(":")[0] in volumes, (name, mount)


def test_the_image_runs_unprivileged_checks_ready_and_leaves_the_build_tools_behind() -> None:
    """What the Dockerfile says (scripts/drill_image.sh builds and runs it, which needs root)."""
    final = DOCKERFILE.rsplit("\nFROM ", 1)[-1]
    user = re.search(r"^USER (\S+)$", final, flags=re.M)
    assert user is not None and user[1] not in ("root", "0"), "the image runs as root"
    assert re.search(r"^HEALTHCHECK (?:.*\\\n)*.*http://127\.0\.0\.1:8000/ready", final, flags=re.M)
    assert "make .venv/.deps-stamp EXTRAS= " in DOCKERFILE, "the image installs the test extras"
    assert "apt-get" not in final and "COPY --from=build /app /app" in final
