"""HTTP errors of the server and their JSON body.

Every error response has the body ``{"error": {"status", "code", "message",
"field", "error_id"}}``. ``message`` is meant for the user and never contains a
traceback; ``error_id`` also appears in the server log line of that error.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any, Optional

from ..errors import InputError, ModelError
from ..wire import PayloadTooLargeError, WireFormatError

if TYPE_CHECKING:
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with an HTTP status and a message for the user."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, field: Optional[str] = None, headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers or {}


class InvalidRequestError(ApiError):
    status = 400
    code = "invalid_input"


class AuthenticationError(ApiError):
    status = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="segmote"'})


class NotFoundError(ApiError):
    status = 404
    code = "not_found"


class ConflictError(ApiError):
    status = 409
    code = "conflict"


class SessionExpiredError(ApiError):
    status = 410
    code = "session_expired"


class TooLargeError(ApiError):
    status = 413
    code = "too_large"


class CapacityError(ApiError):
    status = 503
    code = "at_capacity"


# Client errors (4xx) of one code are logged at most this many times per
# window, so a misconfigured or hostile client cannot flood the log.
CLIENT_ERROR_LOG_LIMIT = 20
CLIENT_ERROR_LOG_WINDOW_SECONDS = 60.0


class _LogRateLimit:
    """Counts log lines per key in fixed time windows."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._lock = threading.Lock()
        self._window_start = time.monotonic()
        self._counts: dict[str, int] = {}

    def allow(self, key: str) -> tuple[bool, int]:
        """Return whether to log one more line for ``key``, and how many were dropped in the last window."""
        with self._lock:
            now = time.monotonic()
            dropped = 0
            if now - self._window_start > self.window_s:
                dropped = sum(max(0, count - self.limit) for count in self._counts.values())
                self._counts.clear()
                self._window_start = now
            self._counts[key] = self._counts.get(key, 0) + 1
            return self._counts[key] <= self.limit, dropped


_client_error_log = _LogRateLimit(CLIENT_ERROR_LOG_LIMIT, CLIENT_ERROR_LOG_WINDOW_SECONDS)


def new_error_id() -> str:
    """Return a short random id that ties a response to its log line."""
    return secrets.token_hex(6)


def as_api_error(error: Exception) -> ApiError:
    """Map an exception raised while handling a request to an :class:`ApiError`.

    Input errors become 400 (413 when too large), model errors and anything
    unexpected become 500 with a generic message.
    """
    from fastapi.exceptions import RequestValidationError

    if isinstance(error, ApiError):
        return error
    if isinstance(error, PayloadTooLargeError):
        return TooLargeError(str(error), field=error.field)
    if isinstance(error, WireFormatError):
        return InvalidRequestError(str(error), field=error.field)
    if isinstance(error, InputError):
        return InvalidRequestError(str(error))
    if isinstance(error, RequestValidationError):
        return _validation_error(error)
    if isinstance(error, ModelError):
        return ApiError(f"model error: {error}")
    return ApiError("internal server error; the server log has the details under the error_id of this response")


def _validation_error(error: RequestValidationError) -> InvalidRequestError:
    """Turn FastAPI's validation error into a 400 naming the first invalid field."""
    details = error.errors()
    if not details:
        return InvalidRequestError("invalid request")
    first = details[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    field = ".".join(location) or "body"
    return InvalidRequestError(f"invalid {field}: {first.get('msg', 'invalid value')}", field=field)


def error_response(error: Exception, request_label: str) -> JSONResponse:
    """Build the JSON response for ``error`` and log it with a fresh error id.

    Only the status, code, error class and ids are logged at WARNING, because
    messages can quote request values. Unexpected errors are logged with their
    traceback, which stays in the server log.
    """
    from fastapi.responses import JSONResponse

    api_error = as_api_error(error)
    error_id = new_error_id()
    if api_error.status >= 500:
        logger.error(
            "Error %s on %s: status %d (%s)", error_id, request_label, api_error.status, type(error).__name__,
            exc_info=error if not isinstance(error, ApiError) else None,
        )
    else:
        allowed, dropped = _client_error_log.allow(api_error.code)
        if dropped:
            logger.warning("%d client error log lines were dropped in the last %.0f s", dropped, CLIENT_ERROR_LOG_WINDOW_SECONDS)
        if allowed:
            logger.warning(
                "Error %s on %s: status %d %s (%s)", error_id, request_label, api_error.status, api_error.code,
                type(error).__name__,
            )
    body: dict[str, Any] = {
        "error": {
            "status": api_error.status,
            "code": api_error.code,
            "message": api_error.message,
            "field": api_error.field,
            "error_id": error_id,
        }
    }
    return JSONResponse(body, status_code=api_error.status, headers=api_error.headers)
