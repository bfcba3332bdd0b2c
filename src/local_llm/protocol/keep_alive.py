"""``keep_alive``, as Ollama defines it, declared once for every route that loads a model.

How long the model stays loaded once idle: a number of seconds, or a Go duration string (``"5m"``,
``"1h30m"``, ``"300ms"``; a bare number in a string, ``"-1"``, ``"0"``, is seconds, as Ollama's
OLLAMA_KEEP_ALIVE reads it). Negative keeps the model loaded; 0 unloads it as soon as it is idle. It
overrides LLM_MODEL_IDLE_TTL_S and the model's ``idle_ttl_s``. Requests carry it as seconds
(``float | None``): the services hand it to the manager as ``keep_alive_s``.

Anything else is refused with a 400 naming ``keep_alive``: a boolean (``false`` is not 0), an object,
a string that is not a duration, a value that is not finite.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import Field, PlainValidator, WithJsonSchema

# Go's time.ParseDuration units, in seconds (``µs`` is written two ways in Unicode).
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_UNIT = r"(?:ns|us|µs|μs|ms|s|m|h)"
# Go's grammar ("a possibly signed sequence of decimal numbers, each with optional fraction and a unit
# suffix"), or Ollama's bare number of seconds.
DURATION_PATTERN = rf"^[+-]?(?:{_NUMBER}|(?:{_NUMBER}{_UNIT})+)$"
_TERM = re.compile(rf"({_NUMBER})({_UNIT})")
_WHOLE = re.compile(DURATION_PATTERN.removeprefix("^").removesuffix("$"))

_EXPECTED = 'a number of seconds or a duration such as "5m", "1h30m", "300ms" or "-1"'


def duration_seconds(text: str) -> float:
    """``text`` as Go's time.ParseDuration reads it, or as a bare number of seconds, in seconds."""
    if _WHOLE.fullmatch(text) is None:
        raise ValueError(f"{text!r} is not {_EXPECTED}")
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if re.fullmatch(_NUMBER, body):
        return sign * float(body)
    return sign * sum(float(number) * _UNITS[unit] for number, unit in _TERM.findall(body))


def keep_alive_seconds(value: Any) -> float:
    """Validate one ``keep_alive`` value (JSON null is handled by the Optional around it)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        shown = "a boolean" if isinstance(value, bool) else f"of type {type(value).__name__}"
        raise ValueError(f"must be {_EXPECTED}, not {shown}")
    try:
        seconds = duration_seconds(value) if isinstance(value, str) else float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ValueError(f"must be {_EXPECTED}, and finite")
    return seconds


_SECONDS_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "number"}, {"type": "string", "pattern": DURATION_PATTERN}],
}

#: A request's ``keep_alive`` field: seconds once validated.
KeepAlive = Annotated[
    Annotated[float, PlainValidator(keep_alive_seconds), WithJsonSchema(_SECONDS_SCHEMA)] | None,
    Field(
        description="Extension (Ollama's): how long the model stays loaded once idle, in seconds or as a "
        'duration ("5m", "1h30m"); negative keeps it loaded, 0 unloads it as soon as it is idle. '
        "Overrides LLM_MODEL_IDLE_TTL_S."
    ),
]
