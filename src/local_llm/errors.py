"""Errors any layer may raise, each carrying what an API's error shape needs, and nothing of HTTP.

Two families:

* Errors raised at the edge (protocol validation, serving), which know the request's fields: an
  :class:`InvalidRequestError` names its ``param``.
* Errors raised by engines and the manager, which know models, inputs and options but never a
  request's field names: an :class:`EngineRequestError` says which :class:`Subject` (the input, the
  query, a document, the prompt) or which engine ``option`` it is about, and each service maps that
  to its own field (a document is ``documents`` on Cohere's route and ``texts`` on TEI's).

Every error says which :class:`ErrorCategory` it is in; ``server/errors.py`` owns the one table that
maps categories to status codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum


class ErrorCategory(str, Enum):
    INVALID_REQUEST = "invalid_request"
    AUTHENTICATION = "authentication"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    HEADERS_TOO_LARGE = "headers_too_large"
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
    param: str | None = None

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


# --- the edge: errors that name a request field --------------------------------------------------
class InvalidRequestError(LocalLLMError):
    """A field's value is wrong; ``param`` names the field."""

    category = ErrorCategory.INVALID_REQUEST
    error_type = "invalid_request_error"
    code: str | None = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        if code is not None:
            self.code = code


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
    param = "model"

    def __init__(self, name: str, served: Sequence[str]) -> None:
        listing = ", ".join(sorted(served)) or "none"
        super().__init__(f"The model '{name}' does not exist. Served models: {listing}.")


class ResponseNotFoundError(LocalLLMError):
    """A stored response (``/v1/responses/{id}``) that is not held: never stored, deleted, or pushed out."""

    category = ErrorCategory.NOT_FOUND
    error_type = "invalid_request_error"
    code = "not_found"


class RequestTooLargeError(LocalLLMError):
    category = ErrorCategory.TOO_LARGE
    error_type = "invalid_request_error"
    code = "request_too_large"


class RequestHeadersTooLargeError(LocalLLMError):
    category = ErrorCategory.HEADERS_TOO_LARGE
    error_type = "invalid_request_error"
    code = "request_header_fields_too_large"


class QueueFullError(LocalLLMError):
    """Back-pressure, decided before any work: the caller should retry after ``retry_after_s``."""

    category = ErrorCategory.OVERLOADED
    error_type = "server_error"
    code = "queue_full"


class LoadQueueFullError(QueueFullError):
    """Too many requests wait for models to load, all models together (LLM_MAX_WAITING_REQUESTS): the
    server, not one model, is short of room, so it is answered as unavailable (503), as documented."""

    category = ErrorCategory.UNAVAILABLE


class ShuttingDownError(LocalLLMError):
    """The server is stopping: new work is refused, and work past the grace period is ended."""

    category = ErrorCategory.UNAVAILABLE
    error_type = "server_error"
    code = "shutting_down"


# --- engines and the manager: errors about models, inputs and options -------------------------
class Subject(str, Enum):
    """What part of a request an engine's complaint is about; each service names it its own way."""

    INPUT = "input"  # an embedding input
    QUERY = "query"  # a rerank query
    DOCUMENT = "document"  # a rerank document
    PROMPT = "prompt"  # a chat's messages, or a completion's prompt


class EngineRequestError(LocalLLMError):
    """The request cannot be served by this model as asked: a 400, in the service's own field names.

    ``subject`` is the part of the request at fault (``index`` its position, where there are
    several); ``option`` the engine option it refuses, by the name the engine's interface gives it.
    """

    category = ErrorCategory.INVALID_REQUEST
    error_type = "invalid_request_error"
    code: str | None = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        subject: Subject | None = None,
        option: str | None = None,
        index: int | None = None,
    ) -> None:
        super().__init__(message)
        self.subject = subject
        self.option = option
        self.index = index


class InputTooLongError(EngineRequestError):
    code = "context_length_exceeded"


class UnsupportedOptionError(EngineRequestError):
    code = "unsupported_option"


class ModelLoadError(LocalLLMError):
    """Loading failed (missing files, corrupt weights, ...); ``retry_after_s`` is when the next try is
    allowed (repeated failures back off)."""

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
    """The model is known but no engine here can serve it (yet), or it was unloaded under the request."""

    category = ErrorCategory.UNAVAILABLE
    error_type = "server_error"
    code = "engine_unavailable"


class EngineError(LocalLLMError):
    """An engine failed on a request for a reason of its own, not the client's; the model keeps serving."""

    category = ErrorCategory.UNAVAILABLE
    error_type = "server_error"
    code = "engine_error"


class EngineFailedError(LocalLLMError):
    """The model's engine died (its process was killed, ran out of memory, hit a CUDA error): every
    request on it ends with this at once; the next request loads the model again."""

    category = ErrorCategory.UNAVAILABLE
    error_type = "server_error"
    code = "engine_failed"


class InternalError(LocalLLMError):
    """Our own bug, answered in the API's shape; the log has the traceback."""

    code = "internal_error"


class OperationNotSupportedError(LocalLLMError):
    """A request this server never carries out, whatever its fields (Ollama's /api/pull, where models
    come from the models folder): refused for good, not failed."""

    category = ErrorCategory.FORBIDDEN
    error_type = "invalid_request_error"
    code = "not_supported"


class ModelBusyError(LocalLLMError):
    """An operator's action that would cut off requests in flight, or undo a pin."""

    category = ErrorCategory.CONFLICT
    error_type = "invalid_request_error"
    code = "model_busy"
