"""``local-llm serve | models | load | unload | pin | unpin | memory``.

``serve`` and ``models`` work on this machine; the operator commands ask a running server over
HTTP (``--url``, default the configured host and port; ``--api-key``, default the first of
LLM_API_KEYS), so they act on the server's own state.

Every setting is also a flag: ``LLM_MODELS_DIR`` is ``--models-dir``, and a flag beats the
environment. Flags are generated from :class:`Settings`, so the two can never drift apart.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from pydantic import ValidationError

from local_llm import __version__
from local_llm.config import Settings
from local_llm.engines.factory import estimate_for
from local_llm.logs import configure_logging
from local_llm.registry import ModelRegistry

if TYPE_CHECKING:
    import uvicorn

T = TypeVar("T")


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
        rows = [["NAME", "TYPE", "FORMAT", "SIZE", "NEEDS CPU", "NEEDS GPU", "ALIASES", "WHY", "PATH"]]
        for spec in registry.models:
            need = estimate_for(spec, settings)
            weight_format = spec.weight_format.value + (
                f" ({spec.quantization})" if spec.quantization else ""
            )
            aliases = ", ".join(spec.aliases) or "-"
            size = _human_size(spec.size_bytes)
            needs = [_human_size(e.total_bytes) for e in (need.on_cpu, need.on_gpu)]
            rows.append(
                [
                    spec.name,
                    spec.kind.value,
                    weight_format,
                    size,
                    *needs,
                    aliases,
                    spec.reason,
                    str(spec.path),
                ]
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

    from local_llm.engines.stderr_tail import STDERR_TAIL
    from local_llm.server.app import create_app
    from local_llm.server.graceful import GracefulServer
    from local_llm.server.http import head_cap_bytes, http_protocol

    # Weights are local files: never reach for a model hub at run time.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Engine processes inherit stderr: a failed start's cause is read back from it.
    STDERR_TAIL.install()
    app = create_app(settings)
    logging.getLogger(__name__).info(
        "local-llm %s listening on http://%s:%d/v1", __version__, settings.host, settings.port
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=settings.log_level == "debug",
        # Heads past the header limit are answered 431 by the app; far past it, cut while they come in.
        http=http_protocol(settings.max_request_header_bytes),
        h11_max_incomplete_event_size=head_cap_bytes(settings.max_request_header_bytes),
        # Our own drain ends every request by LLM_SHUTDOWN_GRACE_S (plus a few seconds for the last
        # events to go out); uvicorn's limit is only a backstop behind it.
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 15,
    )
    sockets = _listeners(config, settings)
    if sockets is not None:
        logging.getLogger(__name__).info(
            "also listening on http://%s:%d for Ollama's clients (LLM_OLLAMA_PORT)",
            settings.host,
            settings.ollama_port,
        )
    GracefulServer(app, config).run(sockets=sockets)
    return 0


def _listeners(config: uvicorn.Config, settings: Settings) -> list[socket.socket] | None:
    """The sockets to serve: None, and uvicorn binds LLM_HOST:LLM_PORT itself; with LLM_OLLAMA_PORT, that
    one and a second on the same host, bound here, so one server (one lifespan, one model manager)
    answers on both."""
    if settings.ollama_port is None:
        return None
    import uvicorn

    second = uvicorn.Config(config.app, host=settings.host, port=settings.ollama_port, log_config=None)
    return [config.bind_socket(), second.bind_socket()]


# --- operator commands: a running server's admin API --------------------------------------------
_ACTIONS = {
    "load": "Load (or wake) a model now, showing how the load goes until the model is up.",
    "unload": "Unload a model (refused while requests hold it, or while it is pinned).",
    "pin": "Pin a model: never evicted (does not load it).",
    "unpin": "Unpin a model.",
}


def _server_url(args: argparse.Namespace, settings: Settings) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    return f"http://{host}:{settings.port}"


def _call_server(method: str, url: str, api_key: str | None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=3600) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def cmd_admin(args: argparse.Namespace, settings: Settings) -> int:
    base = _server_url(args, settings)
    api_key = args.api_key or (settings.api_keys[0] if settings.api_keys else None)
    if args.command == "memory":
        url, method = f"{base}/admin/memory", "GET"
    else:
        url, method = (
            f"{base}/admin/models/{urllib.parse.quote(args.model, safe='/')}/{args.command}",
            "POST",
        )
    card_url = f"{base}/v1/models/{urllib.parse.quote(getattr(args, 'model', ''), safe='/')}"
    try:
        if args.command == "load":
            status, body = _with_progress(lambda: _call_server(method, url, api_key), card_url, api_key)
        else:
            status, body = _call_server(method, url, api_key)
    except (urllib.error.URLError, OSError) as exc:
        print(f"local-llm: no server at {base}: {exc}", file=sys.stderr)
        return 1
    if status >= 400:
        print(f"local-llm: {status}: {body.get('error', {}).get('message', body)}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2, ensure_ascii=False))
    return 0


# How often `local-llm load` asks how the load goes, and (without a terminal) how often it says so.
_POLL_S = 0.5
_PLAIN_EVERY_S = 10.0
_SPINNER = "|/-\\"
_BAR_WIDTH = 24


def _with_progress(call: Callable[[], T], card_url: str, api_key: str | None) -> T:
    """``call()`` (the load, which returns once the model is up) on a thread, while the model's card
    is read every half second and its ``loading`` shown on stderr: a bar redrawn in place on a
    terminal, a line at each stage (and every few seconds) otherwise."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:  # handed to the caller's thread below
            failure.append(exc)

    worker = threading.Thread(target=run, name="load", daemon=True)
    worker.start()
    show = _ProgressLine(sys.stderr)
    while True:
        worker.join(_POLL_S)
        if not worker.is_alive():
            break
        show.update(_loading_of(card_url, api_key))
    show.done()
    if failure:
        raise failure[0]
    return result[0]


def _loading_of(card_url: str, api_key: str | None) -> dict[str, Any] | None:
    """The card's ``loading``, or None when it cannot be read now (the load's own answer says why)."""
    try:
        status, card = _call_server("GET", card_url, api_key)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    loading = card.get("loading") if status == 200 else None
    return loading if isinstance(loading, dict) else None


class _ProgressLine:
    """A load's progress on stderr: one line redrawn on a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._frames = 0
        self._said: tuple[str, float] | None = None
        self._drawn = False

    def update(self, loading: dict[str, Any] | None) -> None:
        if loading is None:
            return
        stage, elapsed = str(loading.get("stage", "")), float(loading.get("elapsed_s") or 0)
        expected = loading.get("expected_s")
        if self._tty:
            self._frames += 1
            self._stream.write("\r\x1b[2K" + _bar(stage, elapsed, expected, self._frames))
            self._drawn = True
        elif self._said is None or self._said[0] != stage or elapsed - self._said[1] >= _PLAIN_EVERY_S:
            last = f" (last time {float(expected):.0f} s)" if expected else ""
            self._stream.write(f"loading: {stage}, {elapsed:.0f} s{last}\n")
            self._said = (stage, elapsed)
        self._stream.flush()

    def done(self) -> None:
        if self._drawn:
            self._stream.write("\r\x1b[2K")
            self._stream.flush()


def _bar(stage: str, elapsed: float, expected: object, frame: int) -> str:
    """``[#####.....]  34 s / 41 s  loading the weights``: filled by the time the last load took, or a
    spinner before there was one (a bar past its end stays full: this load is slower)."""
    if isinstance(expected, (int, float)) and expected > 0:
        filled = min(int(_BAR_WIDTH * elapsed / expected), _BAR_WIDTH)
        return f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {elapsed:4.0f} s / {expected:.0f} s  {stage}"
    return f"[{_SPINNER[frame % len(_SPINNER)]}] {elapsed:4.0f} s  {stage}"


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
    operator = [commands.add_parser(name, help=text) for name, text in _ACTIONS.items()]
    for sub in operator:
        sub.add_argument("model", help="The model's served name (or an alias).")
    operator.append(
        commands.add_parser("memory", help="The server's memory budget and what each model holds.")
    )
    for sub in operator:
        sub.add_argument("--url", help="The server (default: http://LLM_HOST:LLM_PORT).")
        sub.add_argument("--api-key", help="Bearer key (default: the first of LLM_API_KEYS).")
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
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "models":
        return cmd_models(settings)
    if args.command == "serve":
        return cmd_serve(settings)
    return cmd_admin(args, settings)


if __name__ == "__main__":
    raise SystemExit(main())
