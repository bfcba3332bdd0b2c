"""Errors any layer may raise, each carrying what the OpenAI error shape needs.

Layers below the server know nothing of HTTP: an error says which :class:`ErrorCategory` it is in,
and ``server/errors.py`` owns the one table that maps categories to status codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum


class ErrorCategory(str, Enum):
    INVALID_REQUEST = "invalid_request"
    AUTHENTICATION = "authentication"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    INSUFFICIENT_MEMORY = "insufficient_memory"
    CONFLICT = "conflict"
    INTERNAL = "internal"


class LocalLLMError(Exception):
    """Base of every error answered to a client. ``message`` is written for that client."""

    category: ErrorCategory = ErrorCategory.INTERNAL
    error_type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s


class InvalidRequestError(LocalLLMError):
    """A field's value is wrong; ``param`` names the field."""

    category = ErrorCategory.INVALID_REQUEST
    error_type = "invalid_request_error"
    code = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"


class ModelTypeMismatchError(InvalidRequestError):
    code = "model_type_mismatch"

    def __init__(self, model: str, kind: str, route: str) -> None:
        article = "an" if kind[:1] in "aeiou" else "a"
        message = f"Model '{model}' is {article} {kind} model and cannot serve {route}."
        super().__init__(message, param="model")


class AuthenticationError(LocalLLMError):
    category = ErrorCategory.AUTHENTICATION
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class ModelNotFoundError(LocalLLMError):
    category = ErrorCategory.NOT_FOUND
    error_type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, name: str, served: Sequence[str]) -> None:
        listing = ", ".join(sorted(served)) or "none"
        super().__init__(f"The model '{name}' does not exist. Served models: {listing}.", param="model")


class RequestTooLargeError(LocalLLMError):
    category = ErrorCategory.TOO_LARGE
    error_type = "invalid_request_error"
    code = "request_too_large"


class QueueFullError(LocalLLMError):
    """Back-pressure: the caller should retry after ``retry_after_s``."""

    category = ErrorCategory.OVERLOADED
    error_type = "server_error"
    code = "queue_full"


class ModelLoadError(LocalLLMError):
    """Loading failed (missing files, corrupt weights, ...). The next request retries the load."""

    category = ErrorCategory.UNAVAILABLE
    error_type = "server_error"
    code = "model_load_failed"


class ModelLoadTimeoutError(LocalLLMError):
    category = ErrorCategory.UNAVAILABLE
    error_type = "server_error"
    code = "model_loading"


class InsufficientMemoryError(LocalLLMError):
    category = ErrorCategory.INSUFFICIENT_MEMORY
    error_type = "server_error"
    code = "insufficient_memory"


class EngineUnavailableError(LocalLLMError):
    """The model is known but no engine here can serve it (yet)."""

    category = ErrorCategory.UNAVAILABLE
    error_type = "server_error"
    code = "engine_unavailable"


class EngineError(LocalLLMError):
    """An engine failed on a request for a reason of its own, not the client's; the model keeps serving."""

    category = ErrorCategory.UNAVAILABLE
    error_type = "server_error"
    code = "engine_error"


class ModelBusyError(LocalLLMError):
    """An operator's action that would cut off requests in flight, or undo a pin."""

    category = ErrorCategory.CONFLICT
    error_type = "invalid_request_error"
    code = "model_busy"
