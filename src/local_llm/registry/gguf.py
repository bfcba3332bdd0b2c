"""Read what discovery needs from a GGUF file's header, without loading its tensors.

A GGUF file starts with key-value metadata (architecture, name, chat template, tokenizer) before
its tensor table. Reading only those keys takes milliseconds, where ``gguf.GGUFReader`` parses the
whole file (seconds for a small model), so discovery stays instant with many GGUF files around.
Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from local_llm.registry.classify import UnservableFolder

_MAGIC = b"GGUF"
# Value types of the metadata section, with their struct formats (strings and arrays are special).
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
_WANTED = ("general.architecture", "general.name", "general.file_type", "tokenizer.chat_template")
# Encoder architectures a GGUF may hold; they are not chat models and are not imported.
_ENCODER_ARCHITECTURES = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "t5encoder"})

# llama.cpp's file types (general.file_type), for /v1/models: how the weights are quantized.
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    32: "BF16",
}  # fmt: skip


@dataclass(frozen=True)
class GGUFSummary:
    architecture: str
    name: str | None
    quantization: str | None
    chat_template: bool


class _Reader:
    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def unpack(self, fmt: str) -> int | float | bool:
        size = struct.calcsize(fmt)
        data = self._file.read(size)
        if len(data) != size:
            raise UnservableFolder("GGUF file is truncated")
        return struct.unpack(fmt, data)[0]

    def string(self) -> str:
        length = int(self.unpack("<Q"))
        return self._file.read(length).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        self._file.seek(int(self.unpack("<Q")), 1)

    def value(self, value_type: int, keep: bool) -> object:
        if value_type in _SCALARS:
            return self.unpack(_SCALARS[value_type])
        if value_type == _STRING:
            if keep:
                return self.string()
            self.skip_string()
            return None
        if value_type == _ARRAY:
            item_type, count = int(self.unpack("<I")), int(self.unpack("<Q"))
            if item_type in _SCALARS:
                self._file.seek(struct.calcsize(_SCALARS[item_type]) * count, 1)
            else:
                for _ in range(count):
                    self.value(item_type, keep=False)
            return None
        raise UnservableFolder(f"GGUF metadata has an unknown value type {value_type}")


def read_gguf_summary(path: Path) -> GGUFSummary:
    """The architecture, name, quantization and chat-template presence of a GGUF file."""
    try:
        with path.open("rb") as file:
            if file.read(4) != _MAGIC:
                raise UnservableFolder("not a GGUF file (bad magic number)")
            reader = _Reader(file)
            version = int(reader.unpack("<I"))
            if version < 2:
                raise UnservableFolder(f"GGUF version {version} is too old")
            reader.unpack("<Q")  # tensor count
            found: dict[str, object] = {}
            for _ in range(int(reader.unpack("<Q"))):
                key = reader.string()
                found[key] = reader.value(int(reader.unpack("<I")), keep=key in _WANTED)
                if all(k in found for k in _WANTED):
                    break
    except OSError as exc:
        raise UnservableFolder(f"GGUF file is unreadable: {exc}") from exc
    architecture = found.get("general.architecture")
    if not isinstance(architecture, str):
        raise UnservableFolder("GGUF file names no general.architecture")
    file_type = found.get("general.file_type")
    name = found.get("general.name")
    return GGUFSummary(
        architecture=architecture,
        name=name if isinstance(name, str) else None,
        quantization=_FILE_TYPES.get(int(file_type)) if isinstance(file_type, int) else None,
        chat_template=bool(found.get("tokenizer.chat_template")),
    )


def classify_gguf(summary: GGUFSummary) -> str:
    """Why a GGUF is served as a chat model; raises :class:`UnservableFolder` for encoders."""
    if summary.architecture in _ENCODER_ARCHITECTURES:
        raise UnservableFolder(
            f"GGUF of the encoder architecture '{summary.architecture}': only chat/completion models are "
            "imported from GGUF; serve the model's safetensors folder instead"
        )
    template = (
        "with a chat template" if summary.chat_template else "without a chat template (completions only)"
    )
    return f"GGUF {summary.architecture} {template}, imported once as a safetensors folder"
