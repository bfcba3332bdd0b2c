"""One import of a GGUF file at a time, within a server and across servers sharing a data dir."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from local_llm.engines import gguf_import

pytestmark = pytest.mark.unit


def fake_import(calls: list[str]):  # type: ignore[no-untyped-def]
    """An import that takes a while and leaves the folder complete, as the real one does."""

    def run(gguf_file: Path, destination: Path) -> None:
        calls.append(threading.current_thread().name)
        time.sleep(0.3)
        destination.mkdir(parents=True)
        (destination / gguf_import._DONE_MARKER).write_text(str(gguf_file))

    return run


def test_two_servers_on_one_data_dir_import_a_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock file serialises importers that do not share an asyncio lock (other processes; here,
    threads with their own open file, which flock treats the same way); the one that waited finds
    the folder done and imports nothing."""
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    calls: list[str] = []
    monkeypatch.setattr(gguf_import, "import_gguf", fake_import(calls))
    destination = gguf_import.imported_folder(gguf, tmp_path / "data")
    importers = [
        threading.Thread(target=gguf_import._import_once, args=(gguf, destination), name=f"server-{i}")
        for i in range(2)
    ]
    for importer in importers:
        importer.start()
    for importer in importers:
        importer.join(10)
    assert len(calls) == 1
    assert gguf_import.is_imported(destination)


def test_requests_and_start_up_within_one_server_share_one_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    calls: list[str] = []
    monkeypatch.setattr(gguf_import, "import_gguf", fake_import(calls))

    async def scenario() -> set[Path]:
        folders = await asyncio.gather(
            *(gguf_import.ensure_imported(gguf, tmp_path / "data") for _ in range(5))
        )
        return set(folders)

    assert len(asyncio.run(scenario())) == 1
    assert len(calls) == 1
