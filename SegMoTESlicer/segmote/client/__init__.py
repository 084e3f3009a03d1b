"""Torch-free HTTP client of the SegMoTE server (standard library and numpy only).

    from segmote.client import SegMoTEClient
    client = SegMoTEClient("http://gpu-server:8765", token=token)
    session = client.open_session("ct.nii.gz")
    labels = session.segment(prompts)  # numpy (K, J, I) on the volume grid
    session.close()

This package runs on Python 3.9 (Slicer's Python) and never imports torch.
"""

from __future__ import annotations

from .client import SegMoTEClient
from .errors import (
    AuthenticationError,
    JobCancelledError,
    RemoteError,
    RemoteInputError,
    RemoteTimeoutError,
    ServerBusyError,
    ServerUnreachableError,
    SessionExpiredError,
    SessionNotFoundError,
    UploadTooLargeError,
    VersionMismatchError,
)
from .session import RemoteSession
from .transport import Timeouts

__all__ = [
    "AuthenticationError",
    "JobCancelledError",
    "RemoteError",
    "RemoteInputError",
    "RemoteSession",
    "RemoteTimeoutError",
    "SegMoTEClient",
    "ServerBusyError",
    "ServerUnreachableError",
    "SessionExpiredError",
    "SessionNotFoundError",
    "Timeouts",
    "UploadTooLargeError",
    "VersionMismatchError",
]
