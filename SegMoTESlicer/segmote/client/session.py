"""A session on the server: one uploaded volume, prompts, auto jobs.

The session keeps a copy of every segment's latest mask, merges the changed
regions the server returns into it, and builds label maps on the volume grid
from those copies, so each click transfers only what changed.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import numpy as np

from ..errors import InputError
from ..protocol import PromptSet, load_prompts, parse_prompts
from ..wire import (
    HEADER_ARRAY,
    HEADER_BASE_REVISION,
    MEDIA_TYPE_JSON,
    PATH_AUTO_JOB,
    PATH_AUTO_JOB_CANCEL,
    PATH_AUTO_JOB_RESULT,
    PATH_AUTO_JOBS,
    PATH_SEGMENT,
    PATH_SESSION,
    ArrayDescription,
    RegionDescription,
    apply_region,
    decode_array,
    load_header_json,
    session_path,
)
from .errors import JobCancelledError, RemoteError, SessionExpiredError, SessionNotFoundError
from .transport import Transport

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]
Prompts = Union[PromptSet, Mapping[str, Any], str, Path]

# Seconds one job status request waits on the server for a change.
JOB_WAIT_SECONDS = 10.0


def _prompt_set(prompts: Prompts) -> PromptSet:
    if isinstance(prompts, PromptSet):
        return prompts
    if isinstance(prompts, (str, Path)):
        return load_prompts(prompts)
    return parse_prompts(dict(prompts))


def _label_dtype(count: int) -> np.dtype:
    return np.dtype(np.uint8) if count < 256 else np.dtype(np.uint16)


class RemoteSession:
    """A volume uploaded to the server; use one session from one thread at a time.

    Attributes:
        id: the server's session id.
        info: the server's description of the session (shape, geometry, modality).
        shape_kji: volume shape in numpy order ``(K, J, I)``.
        last_regions: the regions of the last :meth:`segment` call, one per segment.
        bytes_sent, bytes_received: traffic of this session's requests so far.
    """

    def __init__(self, transport: Transport, info: Dict[str, Any]) -> None:
        self._transport = transport
        self.id: str = info["session_id"]
        self.info = info
        self.shape_kji = tuple(int(n) for n in info["shape_kji"])
        self._masks: Dict[str, np.ndarray] = {}
        self._revisions: Dict[str, int] = {}
        self._lock = threading.Lock()
        self.last_regions: List[RegionDescription] = []
        self.bytes_sent = 0
        self.bytes_received = 0
        self.closed = False

    def __enter__(self) -> "RemoteSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _request(self, method: str, path: str, timeout_s: float, body: bytes = b"", headers: Optional[Mapping[str, str]] = None):
        reply = self._transport.request(method, path, timeout_s, body, headers)
        self.bytes_sent += reply.bytes_sent
        self.bytes_received += reply.bytes_received
        return reply

    # Prompted segmentation

    def segment(self, prompts: Prompts) -> np.ndarray:
        """Segment every segment of a prompts file and return the label map.

        Args:
            prompts: a :class:`PromptSet`, the prompts JSON as a dict, or a path to a prompts file.

        Returns:
            ``(K, J, I)`` uint8 (uint16 beyond 255 segments) label map on the
            volume grid; value k = the k-th segment. Where segments overlap,
            the voxel keeps the earlier segment's label.

        Raises:
            InputError: invalid prompts (checked here, then by the server).
            SessionExpiredError, SessionNotFoundError: the session is gone.
        """
        prompt_set = _prompt_set(prompts)
        with self._lock:
            labels = np.zeros(self.shape_kji, dtype=_label_dtype(len(prompt_set.segments)))
            self.last_regions = []
            for number, segment in enumerate(prompt_set.segments, start=1):
                mask = self._segment_one(PromptSet(prompt_set.coordinate_system, (segment,)))
                labels[mask & (labels == 0)] = number
            return labels

    def _segment_one(self, single: PromptSet) -> np.ndarray:
        """Send one segment's prompts, merge the changed region, and return the segment's mask."""
        name = single.segments[0].name
        body = json.dumps(single.to_json()).encode("utf-8")
        headers = {"Content-Type": MEDIA_TYPE_JSON, HEADER_BASE_REVISION: str(self._revisions.get(name, 0))}
        path = session_path(PATH_SEGMENT, self.id)
        reply = self._request("POST", path, self._transport.timeouts.segment_s, body, headers)

        region = RegionDescription.from_json(load_header_json(reply.headers.get(HEADER_ARRAY.lower()), HEADER_ARRAY))
        mask = self._masks.get(name)
        if mask is None:
            mask = np.zeros(self.shape_kji, dtype=bool)
        apply_region(mask, region, reply.body)
        self._masks[name] = mask
        self._revisions[name] = region.revision
        self.last_regions.append(region)
        return mask

    @property
    def encoder_calls(self) -> int:
        """Slices the server has encoded for this session (from the latest prompt, or asked now)."""
        if self.last_regions:
            return self.last_regions[-1].encoder_calls
        return int(self.describe()["encoder_calls"])

    def describe(self) -> Dict[str, Any]:
        """Fetch the server's description of the session (shape, encoder counter, segment revisions)."""
        reply = self._request("GET", session_path(PATH_SESSION, self.id), self._transport.timeouts.request_s)
        self.info = reply.json()
        return self.info

    # Prompt-free segmentation

    def auto(
        self,
        structures: List[str],
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[threading.Event] = None,
    ) -> np.ndarray:
        """Run auto-segmentation on the server and return its label map.

        Args:
            structures: structure names; label value k = the k-th structure.
            progress: called with (fraction 0-1, message) whenever the job reports progress.
            cancel: set it to cancel the job; the call then raises :class:`JobCancelledError`.

        Returns:
            ``(K, J, I)`` label map on the volume grid.

        Raises:
            RemoteInputError: an unknown structure name (the message lists the known ones).
            JobCancelledError: the job was cancelled.
            RemoteError: the job failed on the server.
        """
        if isinstance(structures, str):
            structures = [name.strip() for name in structures.split(",") if name.strip()]
        if not structures:
            raise InputError("no structures given: pass at least one structure name, such as ['liver']")
        timeouts = self._transport.timeouts
        body = json.dumps({"structures": list(structures)}).encode("utf-8")
        status = self._request(
            "POST", session_path(PATH_AUTO_JOBS, self.id), timeouts.request_s, body, {"Content-Type": MEDIA_TYPE_JSON}
        ).json()
        job_id = status["job_id"]
        logger.info("Auto job %s started on session %s", job_id, self.id)
        try:
            status = self._follow_job(job_id, status, progress, cancel)
        except BaseException:
            self._cancel_quietly(job_id)
            raise
        if status["status"] == "cancelled":
            raise JobCancelledError(f"auto job {job_id} was cancelled")
        if status["status"] == "failed":
            error = status.get("error") or {}
            raise RemoteError(
                f"auto job {job_id} failed: {error.get('message', 'no message')} (server error id {error.get('error_id')})",
                int(error.get("status", 500)), str(error.get("code", "")), error.get("field"), error.get("error_id"),
            )
        reply = self._request("GET", session_path(PATH_AUTO_JOB_RESULT, self.id, job_id), timeouts.download_s)
        header = load_header_json(reply.headers.get(HEADER_ARRAY.lower()), HEADER_ARRAY)
        description = ArrayDescription.from_json(header.get("array") or {}, "array")
        if tuple(description.shape) != self.shape_kji:
            raise RemoteError(f"the job's label map has shape {description.shape}, not the volume's {self.shape_kji}", 500)
        return decode_array(description, reply.body, description.nbytes, "label map")

    def _follow_job(
        self, job_id: str, status: Dict[str, Any], progress: Optional[ProgressCallback], cancel: Optional[threading.Event]
    ) -> Dict[str, Any]:
        """Long-poll the job's status until it ends, reporting progress and passing on a cancel request."""
        timeouts = self._transport.timeouts
        path = session_path(PATH_AUTO_JOB, self.id, job_id)
        cancel_sent = False
        reported = None
        while status["status"] in ("queued", "running"):
            if cancel is not None and cancel.is_set() and not cancel_sent:
                status = self._request("POST", session_path(PATH_AUTO_JOB_CANCEL, self.id, job_id), timeouts.request_s).json()
                cancel_sent = True
                continue
            query = f"?version={status['version']}&wait_s={JOB_WAIT_SECONDS:g}"
            # While a cancel event is pending, poll briefly so that it is sent soon.
            if cancel is not None and not cancel_sent:
                query = f"?version={status['version']}&wait_s=0.5"
            status = self._request("GET", path + query, timeouts.request_s + JOB_WAIT_SECONDS).json()
            if progress is not None and (status["progress"], status["message"]) != reported:
                reported = (status["progress"], status["message"])
                progress(float(status["progress"]), str(status["message"]))
        return status

    def _cancel_quietly(self, job_id: str) -> None:
        try:
            self._request("POST", session_path(PATH_AUTO_JOB_CANCEL, self.id, job_id), self._transport.timeouts.request_s)
        except Exception:  # noqa: BLE001 - best effort while another error propagates
            logger.warning("Could not cancel auto job %s on session %s", job_id, self.id)

    # Lifetime

    def close(self) -> None:
        """Close the session on the server and free its memory there; closing twice is harmless."""
        if self.closed:
            return
        self.closed = True
        try:
            self._request("DELETE", session_path(PATH_SESSION, self.id), self._transport.timeouts.request_s)
        except (SessionNotFoundError, SessionExpiredError):
            pass
        self._masks.clear()
