"""Errors the client raises, one class per way a request can fail.

Every class derives from :class:`segmote.errors.SegMoTEError`, so callers
that show such messages to the user as they are need no new code.
"""

from __future__ import annotations

from typing import Any, Optional

from ..errors import InputError, SegMoTEError


class ServerUnreachableError(SegMoTEError):
    """No connection to the server: refused, unknown host, network down, or a connect timeout."""


class RemoteTimeoutError(SegMoTEError):
    """The server accepted the connection but did not respond within the phase's timeout."""


class VersionMismatchError(SegMoTEError):
    """The server speaks another API version than this client."""


class RemoteError(SegMoTEError):
    """An error response from the server.

    Attributes:
        status: HTTP status code.
        code: the server's error code (``invalid_input``, ``session_expired``, ...).
        field: the request field the server blamed, if any.
        error_id: id of the server's log line for this error.
    """

    def __init__(self, message: str, status: int, code: str = "", field: Optional[str] = None, error_id: Optional[str] = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.field = field
        self.error_id = error_id


class RemoteInputError(RemoteError, InputError):
    """HTTP 400: the server rejected a value; the message names the field."""


class AuthenticationError(RemoteError):
    """HTTP 401: the token is missing or wrong."""


class SessionNotFoundError(RemoteError):
    """HTTP 404: unknown or closed session (or job)."""


class SessionExpiredError(RemoteError):
    """HTTP 410: the session expired after its idle timeout; open a new one."""


class UploadTooLargeError(RemoteError):
    """HTTP 413 (or the client's own check against the server's limit): the upload is too large."""


class ServerBusyError(RemoteError):
    """HTTP 503: the server has as many sessions open as it allows."""


class JobCancelledError(SegMoTEError):
    """An auto job ended because it was cancelled."""


ERRORS_BY_STATUS = {
    400: RemoteInputError,
    401: AuthenticationError,
    404: SessionNotFoundError,
    410: SessionExpiredError,
    413: UploadTooLargeError,
    503: ServerBusyError,
}


def error_from_body(status: int, body: Any, url: str) -> RemoteError:
    """Build the error for a non-2xx response from its JSON body (``{"error": {...}}``) or its status."""
    detail = body.get("error") if isinstance(body, dict) else None
    if not isinstance(detail, dict):
        message = f"the server at {url} returned HTTP {status} without a SegMoTE error body"
        return ERRORS_BY_STATUS.get(status, RemoteError)(message, status)
    message = str(detail.get("message") or f"HTTP {status}")
    error_id = detail.get("error_id")
    if error_id:
        message = f"{message} (server error id {error_id})"
    error_class = ERRORS_BY_STATUS.get(status, RemoteError)
    return error_class(message, status, str(detail.get("code", "")), detail.get("field"), error_id)
