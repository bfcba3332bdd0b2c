"""The `local-llm` command as a user runs it, and settings precedence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from local_llm.cli import build_parser, settings_from_args
from local_llm.config import Settings

pytestmark = pytest.mark.unit


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "local_llm", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


def test_models_lists_name_type_format_size_reason_and_skips(zoo: Path) -> None:
    result = run_cli("models", "--models-dir", str(zoo))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = ["NAME", "TYPE", "FORMAT", "SIZE", "NEEDS", "CPU", "NEEDS", "GPU", "ALIASES", "WHY"]
    assert lines[0].split()[:10] == header
    row = next(line for line in lines if line.startswith("Qwen3-Embedding-tiny "))
    for part in ("embedding", "safetensors", "MB", "modules.json"):
        assert part in row
    # The estimate adds activations and the runtime (128 MiB) to a few MB of weights.
    need_cpu = row.split()[5:7]
    assert need_cpu[1] == "MB"
    assert float(need_cpu[0]) > 134
    assert any(line.startswith("tiny-chat ") and " chat " in line for line in lines)
    assert any(line.startswith("all-MiniLM-L6-v2 ") for line in lines)
    assert "Skipped:" in result.stdout
    assert "broken-config: config.json is unreadable" in result.stdout
    # What would only fail at load time is reported now: damaged weights, a missing tokenizer.
    skipped = result.stdout.split("Skipped:", 1)[1]
    assert "truncated-embed: model.safetensors: SafetensorError" in skipped
    assert "no-tokenizer-chat: no tokenizer" in skipped
    assert not any(line.startswith(("truncated-embed ", "no-tokenizer-chat ")) for line in lines)


def test_models_without_a_folder_shows_the_bundled_model() -> None:
    result = run_cli("models", env={"LLM_MODELS_DIR": ""})
    assert result.returncode == 0, result.stderr
    assert "all-MiniLM-L6-v2" in result.stdout


def test_invalid_setting_is_a_clear_error() -> None:
    result = run_cli("models", "--port", "not-a-port")
    assert result.returncode == 2
    assert "--port" in result.stderr
    assert "LLM_PORT" in result.stderr


def test_flags_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_PORT", "1234")
    monkeypatch.setenv("LLM_MODEL_CACHE_SIZE", "5")
    monkeypatch.setenv("LLM_API_KEYS", "a, b")
    args = build_parser().parse_args(["serve", "--port", "4321", "--no-auto-unload-models"])
    settings = settings_from_args(args)
    assert settings.port == 4321  # flag
    assert settings.model_cache_size == 5  # environment
    assert settings.auto_unload_models is False
    assert settings.api_keys == ["a", "b"]


def test_defaults_are_secure() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.host == "127.0.0.1"
    assert settings.port == 15530
    assert settings.api_keys == []


def _sample_value(name: str) -> tuple[list[str], object]:
    """A flag's arguments for a value unlike the default, and the value Settings should then hold."""
    field = Settings.model_fields[name]
    annotation, default = str(field.annotation), field.default
    if field.annotation is bool:
        return (
            [f"--no-{name}".replace("_", "-")] if default else [f"--{name}".replace("_", "-")]
        ), not default
    flag = "--" + name.replace("_", "-")
    if "list" in annotation:
        return [flag, "a,b"], ["a", "b"]
    if "Path" in annotation:
        return [flag, "/tmp/somewhere"], Path("/tmp/somewhere")
    if "Literal" in annotation:
        choices = [c for c in field.annotation.__args__ if c != default]  # type: ignore[union-attr]
        return [flag, choices[0]], choices[0]
    if "int" in annotation and "float" not in annotation:
        return [flag, "7"], 7
    if "float" in annotation:
        return [flag, "7.5"], 7.5
    return [flag, "x-value"], "x-value"


def test_every_setting_is_a_flag_that_takes_effect() -> None:
    """Each flag, given a value unlike the default, lands in Settings (a flag wired to the wrong field,
    or a boolean that cannot be turned off, fails here)."""
    for name in Settings.model_fields:
        arguments, expected = _sample_value(name)
        if name == "max_queued_inputs":  # must hold LLM_MAX_INPUTS_PER_REQUEST's default (2048)
            arguments, expected = ["--max-queued-inputs", "9999"], 9999
        settings = settings_from_args(build_parser().parse_args(["serve", *arguments]))
        assert getattr(settings, name) == expected, name


def test_readme_settings_table_is_current() -> None:
    from local_llm.config import settings_table

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert settings_table() in readme, (
        "regenerate the README's settings table from local_llm.config.settings_table()"
    )


def test_readme_opens_with_the_two_commands_ci_runs() -> None:
    root = Path(__file__).parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    first_block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    assert first_block.splitlines()[0].startswith("make serve")
    assert first_block.splitlines()[1].startswith("make test")
    assert "make test" in (root / ".ci" / "run").read_text()


def test_empty_models_dir_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_MODELS_DIR", "")
    assert Settings().models_dir is None
    monkeypatch.setenv("LLM_MODELS_DIR", "~/models")
    assert Settings().models_dir == Path.home() / "models"


def test_a_queue_smaller_than_one_request_is_refused() -> None:
    result = run_cli("models", "--max-queued-inputs", "10", "--max-inputs-per-request", "64")
    assert result.returncode == 2
    assert "LLM_MAX_QUEUED_INPUTS (10) must be at least LLM_MAX_INPUTS_PER_REQUEST (64)" in result.stderr
