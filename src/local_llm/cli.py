"""``local-llm serve | models``.

Every setting is also a flag: ``LLM_MODELS_DIR`` is ``--models-dir``, and a flag beats the
environment. Flags are generated from :class:`Settings`, so the two can never drift apart.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from local_llm import __version__
from local_llm.config import Settings
from local_llm.registry import ModelRegistry


def _flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        env = f"LLM_{name.upper()}"
        help_text = f"{field.description or ''} [env {env}]".replace("%", "%%")
        if field.annotation is bool:
            parser.add_argument(_flag(name), dest=name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(_flag(name), dest=name, metavar=name.upper(), help=help_text)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Environment first, then the flags given on the command line."""
    overrides: dict[str, Any] = {
        name: value for name in Settings.model_fields if (value := getattr(args, name, None)) is not None
    }
    return Settings(**overrides)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def cmd_models(settings: Settings) -> int:
    registry = ModelRegistry.discover(settings.models_dir, settings.bundled_models)
    if registry.models:
        rows = [["NAME", "TYPE", "FORMAT", "SIZE", "ALIASES", "WHY", "PATH"]]
        for spec in registry.models:
            weight_format = spec.weight_format.value + (
                f" ({spec.quantization})" if spec.quantization else ""
            )
            aliases = ", ".join(spec.aliases) or "-"
            size = _human_size(spec.size_bytes)
            rows.append(
                [spec.name, spec.kind.value, weight_format, size, aliases, spec.reason, str(spec.path)]
            )
        _print_table(rows)
    else:
        print("No models found." + ("" if settings.models_dir else " Set LLM_MODELS_DIR or --models-dir."))
    if registry.skipped:
        print("\nSkipped:")
        for skipped in registry.skipped:
            print(f"  {skipped.path}: {skipped.reason}")
    if registry.notes:
        print("\nNotes:")
        for note in registry.notes:
            print(f"  {note}")
    return 0


def cmd_serve(settings: Settings) -> int:
    import uvicorn

    from local_llm.server.app import create_app

    # Weights are local files: never reach for a model hub at run time.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app = create_app(settings)
    logging.getLogger(__name__).info(
        "local-llm %s listening on http://%s:%d/v1", __version__, settings.host, settings.port
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=settings.log_level == "debug",
        timeout_graceful_shutdown=10,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="local-llm", description="OpenAI-compatible server for local models."
    )
    parser.add_argument("--version", action="version", version=f"local-llm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="Start the server.")
    models = commands.add_parser(
        "models", help="List the models discovery finds, and why folders were skipped."
    )
    for sub in (serve, models):
        _add_settings_flags(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        for error in exc.errors():
            if error["loc"]:
                field = str(error["loc"][0])
                print(f"local-llm: {_flag(field)} / LLM_{field.upper()}: {error['msg']}", file=sys.stderr)
            else:
                print(f"local-llm: {error['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if args.command == "models":
        return cmd_models(settings)
    return cmd_serve(settings)


if __name__ == "__main__":
    raise SystemExit(main())
