"""SegMoTEClient: the entry point of the torch-free HTTP client."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from .. import __version__
from ..errors import InputError
from ..wire import (
    API_VERSION,
    HEADER_AUTHORIZATION,
    HEADER_CLIENT_API_VERSION,
    HEADER_UPLOAD,
    MEDIA_TYPE_BINARY,
    PATH_HEALTH,
    PATH_SESSIONS,
    PATH_VERSION,
    dump_header_json,
)
from .errors import SessionNotFoundError, UploadTooLargeError, VersionMismatchError
from .session import RemoteSession
from .transport import ServerAddress, Timeouts, Transport
from .uploads import array_upload, file_upload

logger = logging.getLogger(__name__)

Source = Union[str, Path, Tuple[np.ndarray, Any]]

# Uploads larger than this are preceded by an authenticated health request, so
# that a wrong token is reported before megabytes are sent for nothing.
PREFLIGHT_MIN_BYTES = 1 << 20


class SegMoTEClient:
    """A connection to one SegMoTE server.

    Example::

        client = SegMoTEClient("http://gpu-server:8765", token=token)
        with client.open_session("ct.nii.gz") as session:
            labels = session.segment("prompts.json")  # (K, J, I) on the CT's grid

    Args:
        url: server URL with scheme, such as ``http://gpu-server:8765``.
        token: bearer token, when the server requires one.
        timeouts: seconds per request phase; see :class:`Timeouts`.

    Raises:
        InputError: a URL without scheme or host.
    """

    def __init__(self, url: str, token: Optional[str] = None, timeouts: Optional[Timeouts] = None) -> None:
        self.address = ServerAddress.parse(url)
        headers = {HEADER_CLIENT_API_VERSION: str(API_VERSION), "User-Agent": f"segmote-client/{__version__}"}
        if token:
            headers[HEADER_AUTHORIZATION] = f"Bearer {token.strip()}"
        self.timeouts = timeouts or Timeouts()
        self._transport = Transport(self.address, headers, self.timeouts)
        self._version: Optional[Dict[str, Any]] = None
        self._version_lock = threading.Lock()

    def __enter__(self) -> "SegMoTEClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the client's connections (sessions stay open on the server until closed or expired)."""
        self._transport.close()

    def version(self) -> Dict[str, Any]:
        """Return the server's version and capabilities, checking that its API version matches.

        Raises:
            VersionMismatchError: the server runs another API version.
            ServerUnreachableError: no connection to the server.
        """
        with self._version_lock:
            if self._version is None:
                try:
                    info = self._transport.request("GET", PATH_VERSION, self.timeouts.request_s).json()
                except SessionNotFoundError:
                    raise VersionMismatchError(
                        f"{self.address.url} has no {PATH_VERSION}: it is not a SegMoTE server, or a version "
                        "older than this client; check the URL"
                    ) from None
                except ValueError:
                    raise VersionMismatchError(f"{self.address.url}{PATH_VERSION} did not return JSON; check the URL") from None
                server_api = info.get("api_version") if isinstance(info, dict) else None
                if server_api != API_VERSION:
                    raise VersionMismatchError(
                        f"the server at {self.address.url} speaks API version {server_api} (segmote "
                        f"{info.get('server_version') if isinstance(info, dict) else '?'}), this client speaks "
                        f"{API_VERSION} (segmote {__version__}); install matching segmote versions"
                    )
                self._version = info
            return self._version

    def health(self) -> Dict[str, Any]:
        """Return the server's model, device, session count and free memory."""
        self.version()
        return self._transport.request("GET", PATH_HEALTH, self.timeouts.request_s).json()

    def open_session(
        self,
        source: Source,
        series: Optional[str] = None,
        window: Optional[str] = None,
        modality: Optional[str] = None,
    ) -> RemoteSession:
        """Upload a volume and open a session on it.

        Args:
            source: a NIfTI/NRRD/MHA file, a DICOM folder or a zip of one, or an
                ``(array, geometry)`` pair. The array is in numpy order ``(K, J, I)``.
                The geometry is a :class:`segmote.geometry.Grid`, or a dict with
                ``origin_lps`` (mm), ``spacing_ijk`` (mm), ``direction_lps``
                (9 numbers, row-major, columns are the i, j, k axes) and
                optionally ``modality``.
            series: SeriesInstanceUID or SeriesNumber, when the DICOM folder contains several series.
            window: CT window (``soft_tissue``, ``lung``, ``bone``, ``brain``); None lets the server choose.
            modality: DICOM modality, such as ``CT`` or ``MR``, when the file does not record it.

        Raises:
            InputError: an unreadable source, or a volume the server rejects.
            UploadTooLargeError: the upload exceeds the server's limit.
            ServerBusyError: the server has its maximum number of sessions open.
        """
        limit = int(self.version()["max_upload_bytes"])
        if isinstance(source, tuple):
            if len(source) != 2:
                raise InputError("pass an array source as a pair (array, geometry)")
            description, body, _ = array_upload(source[0], source[1], window, modality)
        elif isinstance(source, (str, Path)):
            description, body = file_upload(Path(source), series, window, modality)
        else:
            raise InputError(
                f"cannot open a session on a {type(source).__name__}: pass a file or folder path, or (array, geometry)"
            )
        if len(body) > limit:
            raise UploadTooLargeError(
                f"the upload of {len(body)} bytes exceeds the server limit of {limit} bytes "
                f"({limit / (1 << 20):.1f} MiB); crop or downsample the volume, or ask for a larger --max-upload-mb",
                413, "too_large", "body",
            )
        if len(body) > PREFLIGHT_MIN_BYTES:
            self.health()  # a wrong token fails here, before the upload is sent
        headers = {"Content-Type": MEDIA_TYPE_BINARY, HEADER_UPLOAD: dump_header_json(description.to_json())}
        reply = self._transport.request("POST", PATH_SESSIONS, self.timeouts.upload_s, body, headers)
        session = RemoteSession(self._transport, reply.json())
        session.bytes_sent += reply.bytes_sent
        session.bytes_received += reply.bytes_received
        logger.info("Opened session %s on %s: %s, %d bytes sent", session.id, self.address.url, list(session.shape_kji), len(body))
        return session
