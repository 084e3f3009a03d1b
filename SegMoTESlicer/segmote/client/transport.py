"""HTTP requests over keep-alive connections with per-phase timeouts and one retry.

Standard library only. Each thread gets its own connection, so one client
can serve several threads. A request that fails with a connection reset
(typically a keep-alive connection the server closed while idle) is sent
once more on a new connection.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

from ..errors import InputError
from .errors import RemoteTimeoutError, ServerUnreachableError, error_from_body

# Failures after which the request is sent once more on a new connection.
RETRIED_ERRORS = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, http.client.RemoteDisconnected)


@dataclass(frozen=True)
class Timeouts:
    """Seconds each phase of a request may take without progress.

    The read timeouts bound the wait for each chunk of the response, so
    ``segment_s`` must cover the longest prompt: with propagation on a CPU,
    one encode per slice at about 1 s each.

    Attributes:
        connect_s: opening a TCP connection.
        request_s: small requests (version, health, session info, job status).
        upload_s: sending a volume and waiting for the server to decode it.
        segment_s: one prompt, including propagation.
        download_s: fetching an auto job's label map.
    """

    connect_s: float = 10.0
    request_s: float = 30.0
    upload_s: float = 600.0
    segment_s: float = 600.0
    download_s: float = 300.0


@dataclass
class Reply:
    """A successful response.

    Attributes:
        status: HTTP status (2xx).
        headers: response headers, names in lower case.
        body: response body.
        bytes_sent: request line, headers and body sent, in bytes.
        bytes_received: status line, headers and body received, in bytes.
    """

    status: int
    headers: dict[str, str]
    body: bytes
    bytes_sent: int
    bytes_received: int

    def json(self) -> Any:
        """Parse the body as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True)
class ServerAddress:
    """Server location, parsed from its URL.

    Attributes:
        url: the URL as given, without a trailing slash.
        scheme: ``http`` or ``https``.
        host: host name or IP address.
        port: TCP port.
        base_path: path prefix before the API paths ("" or "/prefix").
    """

    url: str
    scheme: str
    host: str
    port: int
    base_path: str

    @staticmethod
    def parse(url: str) -> "ServerAddress":
        """Parse and check a server URL such as ``http://gpu-server:8765``.

        Raises:
            InputError: no ``http://`` or ``https://`` scheme, or no host.
        """
        text = str(url).strip().rstrip("/")
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InputError(
                f"invalid server URL {url!r}: include the scheme and host, for example http://gpu-server:8765"
            )
        if not parts.hostname:
            raise InputError(f"invalid server URL {url!r}: no host name; use for example http://gpu-server:8765")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise InputError(f"invalid server URL {url!r}: the port must be a number from 1 to 65535") from None
        return ServerAddress(text, parts.scheme, parts.hostname, port, parts.path.rstrip("/"))


class Transport:
    """Sends requests to one server; thread-safe through one connection per thread."""

    def __init__(self, address: ServerAddress, default_headers: Mapping[str, str], timeouts: Timeouts) -> None:
        self.address = address
        self.default_headers = dict(default_headers)
        self.timeouts = timeouts
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._connections_lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection_class = http.client.HTTPSConnection if self.address.scheme == "https" else http.client.HTTPConnection
            connection = connection_class(self.address.host, self.address.port, timeout=self.timeouts.connect_s)
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def close(self) -> None:
        """Close every connection this transport opened."""
        with self._connections_lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()

    def request(
        self,
        method: str,
        path: str,
        timeout_s: float,
        body: bytes = b"",
        headers: Optional[Mapping[str, str]] = None,
    ) -> Reply:
        """Send a request and return the reply; raise the matching error for a non-2xx status.

        Raises:
            ServerUnreachableError: no connection could be made.
            RemoteTimeoutError: the server did not respond within ``timeout_s``.
            RemoteError: (a subclass per status) the server returned an error.
        """
        all_headers = {**self.default_headers, **(headers or {})}
        if body or method in ("POST", "PUT"):
            all_headers["Content-Length"] = str(len(body))
        full_path = self.address.base_path + path
        try:
            return self._send(method, full_path, body, all_headers, timeout_s)
        except RETRIED_ERRORS:
            self._drop_connection()
        try:
            return self._send(method, full_path, body, all_headers, timeout_s)
        except RETRIED_ERRORS as error:
            self._drop_connection()
            raise ServerUnreachableError(
                f"the connection to {self.address.url} was reset twice during {method} {full_path} "
                f"({type(error).__name__}); check the server log and any proxy between client and server"
            ) from None

    def _connect(self, connection: http.client.HTTPConnection) -> None:
        """Open the TCP connection, raising :class:`ServerUnreachableError` on any failure."""
        try:
            connection.connect()
        except socket.timeout:
            self._drop_connection()
            raise ServerUnreachableError(
                f"cannot connect to the SegMoTE server at {self.address.url}: no response within "
                f"{self.timeouts.connect_s:g} s; check the URL, the firewall, and that the server is running"
            ) from None
        except OSError as error:
            self._drop_connection()
            reason = error.strerror or str(error) or type(error).__name__
            raise ServerUnreachableError(
                f"cannot connect to the SegMoTE server at {self.address.url}: {reason}; "
                "check the URL and that the server is running"
            ) from None

    @staticmethod
    def _response_after_failed_send(connection: http.client.HTTPConnection) -> Optional[http.client.HTTPResponse]:
        """Return an error response that the server sent before the request body was complete, or None."""
        try:
            response = connection.getresponse()
        except (OSError, http.client.HTTPException):
            return None
        return response if response.status >= 400 else None

    def _send(self, method: str, path: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> Reply:
        connection = self._connection()
        if connection.sock is None:
            self._connect(connection)
        try:
            connection.sock.settimeout(timeout_s)
            try:
                connection.request(method, path, body=body or None, headers=dict(headers))
            except RETRIED_ERRORS:
                # A server may respond to an upload it rejects (401, 413) before reading
                # the body, and then close the connection. Read that response if it arrived.
                response = self._response_after_failed_send(connection)
                if response is None:
                    raise
            else:
                response = connection.getresponse()
            data = response.read()
        except RETRIED_ERRORS:
            raise
        except socket.timeout:
            self._drop_connection()
            raise RemoteTimeoutError(
                f"{method} {self.address.url}{path} timed out: no response within {timeout_s:g} s; "
                "the server may be overloaded, or raise the client's timeouts"
            ) from None
        except OSError as error:
            self._drop_connection()
            raise ServerUnreachableError(
                f"{method} {self.address.url}{path} failed: {error.strerror or type(error).__name__}; "
                "check the network between client and server"
            ) from None
        except http.client.HTTPException as error:
            self._drop_connection()
            raise ServerUnreachableError(
                f"{method} {self.address.url}{path} got an invalid HTTP response ({type(error).__name__}); "
                "check that the URL points to a SegMoTE server"
            ) from None
        if response.will_close:
            self._drop_connection()

        header_map = {name.lower(): value for name, value in response.getheaders()}
        sent = len(body) + len(method) + len(path) + sum(len(k) + len(v) + 4 for k, v in headers.items()) + 12
        received = len(data) + 17 + sum(len(k) + len(v) + 4 for k, v in response.getheaders())
        if not 200 <= response.status < 300:
            try:
                parsed = json.loads(data) if data else None
            except (json.JSONDecodeError, UnicodeDecodeError):
                parsed = None
            raise error_from_body(response.status, parsed, self.address.url)
        return Reply(response.status, header_map, data, sent, received)
