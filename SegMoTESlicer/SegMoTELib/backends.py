"""One backend interface for the Slicer module, with an in-process and a remote implementation.

- :class:`InProcessBackend` runs the model in Slicer's Python (needs torch and
  the engine packages, see :mod:`.dependencies`).
- :class:`RemoteBackend` sends the volume and prompts to a SegMoTE server
  through :class:`segmote.client.SegMoTEClient` (stdlib and numpy only).

Both take a volume as a numpy array ``(K, J, I)`` plus its :class:`Grid`, take
prompts as the prompts JSON (RAS), and return masks on the same grid, so the
module code is the same for both. Heavy imports happen on first use, so this
module imports neither slicer, Qt nor torch.
"""

from __future__ import annotations

import abc
import logging
import threading
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from segmote.errors import InputError
from segmote.geometry import Grid

from .jobs import JobCancelled, ProgressCallback

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendInfo:
    """Description of a backend: model name, device (``cpu``, ``cuda:0``, ...) and SegMoTE version."""

    model: str
    device: str
    version: str

    def text(self) -> str:
        """Return the one-line description shown after "Test connection"."""
        return f"model {self.model} on {self.device}, SegMoTE {self.version}"


class BackendSession(abc.ABC):
    """One volume opened on a backend; prompts and auto-segmentation run against it."""

    @abc.abstractmethod
    def segment(self, prompts: dict[str, Any]) -> np.ndarray:
        """Segment the single segment of a prompts JSON; return a boolean mask ``(K, J, I)``."""

    @abc.abstractmethod
    def auto(
        self, structures: Sequence[str], progress: Optional[ProgressCallback], cancel: Optional[threading.Event]
    ) -> np.ndarray:
        """Segment ``structures`` without prompts; return a label map ``(K, J, I)`` uint8, value k = k-th structure.

        Raises:
            JobCancelled: ``cancel`` was set before the work finished.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Free the session's memory on the backend."""


class Backend(abc.ABC):
    """A place where the model runs."""

    @abc.abstractmethod
    def info(self) -> BackendInfo:
        """Return the model, device and version (loads the model or contacts the server)."""

    @abc.abstractmethod
    def structures(self) -> list[str]:
        """Return the structure names that auto-segmentation can produce."""

    @abc.abstractmethod
    def open_session(self, array_kji: np.ndarray, grid: Grid, modality: Optional[str] = None) -> BackendSession:
        """Open a session on a volume ``(K, J, I)`` on ``grid``."""


def model_name(engine_info: Any) -> str:
    """Return a display name from an engine description: the backbone, plus the adapters' name when loaded."""
    if not isinstance(engine_info, dict):
        return str(engine_info)
    name = str(engine_info.get("backbone", "unknown"))
    adapters = engine_info.get("adapters") or {}
    if adapters.get("name"):
        name += f" + {adapters['name']}"
    return name


def _check_volume(array_kji: np.ndarray, grid: Grid) -> None:
    if tuple(array_kji.shape[:3]) != tuple(grid.shape_kji):
        raise InputError(f"volume array of shape {array_kji.shape} does not match its grid {grid.shape_kji}")


def _check_cancel(cancel: Optional[threading.Event]) -> None:
    if cancel is not None and cancel.is_set():
        raise JobCancelled()


class InProcessBackend(Backend):
    """Runs the SegMoTE engine in this Python process; the model loads on first use."""

    def __init__(self, backbone: str = "lite-medsam", checkpoint: Optional[str] = None, adapters: str = "default", device: str = "auto"):
        self._options = {"backbone": backbone, "checkpoint": checkpoint, "adapters": adapters, "device": device}
        self._engine: Any = None
        self._lock = threading.Lock()

    @property
    def engine(self) -> Any:
        """The loaded :class:`segmote.engine.session.Engine` (loaded once, thread-safe)."""
        with self._lock:
            if self._engine is None:
                from segmote.engine.session import Engine

                logger.info("Loading the SegMoTE engine with %s", self._options)
                self._engine = Engine.load(**self._options)
            return self._engine

    def info(self) -> BackendInfo:
        import segmote

        return BackendInfo(model=model_name(self.engine.info), device=str(self.engine.device), version=segmote.__version__)

    def structures(self) -> list[str]:
        return list(self.engine.structures)

    def open_session(self, array_kji: np.ndarray, grid: Grid, modality: Optional[str] = None) -> BackendSession:
        from segmote.engine.session import VolumeSession
        from segmote.engine.volume import volume_from_array

        _check_volume(array_kji, grid)
        volume = volume_from_array(array_kji, grid.origin_lps, grid.spacing_ijk, grid.direction, modality=modality)
        return _InProcessSession(VolumeSession(self.engine, volume))


class _InProcessSession(BackendSession):
    def __init__(self, session: Any):
        self._session = session

    def segment(self, prompts: dict[str, Any]) -> np.ndarray:
        from segmote.protocol import parse_prompts

        prompt_set = parse_prompts(prompts)
        if len(prompt_set.segments) != 1:
            raise InputError(f"expected prompts for one segment, got {len(prompt_set.segments)}")
        result = self._session.segment(prompt_set.segments[0], coordinate_system=prompt_set.coordinate_system)
        return np.asarray(result.mask, dtype=bool)

    def auto(self, structures: Sequence[str], progress: Optional[ProgressCallback], cancel: Optional[threading.Event]) -> np.ndarray:
        try:
            labels = self._session.auto(list(structures), progress=progress, cancel=cancel)
        except InterruptedError:  # the engine raises this when the cancel event is set
            raise JobCancelled() from None
        _check_cancel(cancel)
        return np.asarray(labels)

    def close(self) -> None:
        self._session = None


class RemoteBackend(Backend):
    """Talks to a SegMoTE server over HTTP."""

    def __init__(self, url: str, token: Optional[str] = None):
        from segmote.client import SegMoTEClient

        if not url.strip():
            raise InputError("the server URL is empty: enter it as http://host:port")
        self._client = SegMoTEClient(url.strip(), token=token or None)
        self._health: Optional[dict[str, Any]] = None

    def health(self) -> dict[str, Any]:
        """Return the server's health report (raises the client's error on version mismatch)."""
        self._health = dict(self._client.health())
        return self._health

    def info(self) -> BackendInfo:
        health = self.health()
        return BackendInfo(
            model=model_name(health.get("model")),
            device=str(health.get("device", "unknown")),
            version=str(health.get("server_version", "unknown")),
        )

    def structures(self) -> list[str]:
        health = self._health if self._health is not None else self.health()
        model = health.get("model")
        return [str(name) for name in model.get("structures", [])] if isinstance(model, dict) else []

    def open_session(self, array_kji: np.ndarray, grid: Grid, modality: Optional[str] = None) -> BackendSession:
        _check_volume(array_kji, grid)
        return _RemoteSession(self._client.open_session((np.ascontiguousarray(array_kji), grid), modality=modality))


class _RemoteSession(BackendSession):
    def __init__(self, session: Any):
        self._session = session

    def segment(self, prompts: dict[str, Any]) -> np.ndarray:
        labels = np.asarray(self._session.segment(prompts))
        return labels == 1

    def auto(self, structures: Sequence[str], progress: Optional[ProgressCallback], cancel: Optional[threading.Event]) -> np.ndarray:
        from segmote.client import JobCancelledError

        try:
            labels = self._session.auto(list(structures), progress=progress, cancel=cancel)
        except JobCancelledError:
            raise JobCancelled() from None
        return np.asarray(labels)

    def close(self) -> None:
        self._session.close()
