"""Auto-segmentation jobs: state, progress, cancellation and waiting for changes.

A job moves from ``queued`` to ``running`` to one of ``done``, ``failed`` or
``cancelled``. The worker thread updates it; request handlers read snapshots
and may wait (long polling) until its ``version`` changes.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Any, Callable, Optional

import numpy as np

logger = logging.getLogger(__name__)

JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")

# Finished jobs kept per session (with their label maps) for the client to fetch.
MAX_FINISHED_JOBS_PER_SESSION = 4


class JobCancelled(Exception):
    """Raised inside a job's progress callback once the job is cancelled."""


class AutoJob:
    """One auto-segmentation request on one session.

    Attributes:
        id: random hex id.
        session_id: the session it runs on.
        structures: structure names; label value k of the result is the k-th.
        status: one of :data:`JOB_STATES`.
        progress: fraction done, 0 to 1.
        message: the latest progress message from the engine.
        error: the error body for a failed job, else None.
        result: ``(K, J, I)`` uint8 or uint16 label map once ``done``.
        version: raised on every change, for long polling.
    """

    def __init__(self, session_id: str, structures: list[str]) -> None:
        self.id = secrets.token_hex(8)
        self.session_id = session_id
        self.structures = list(structures)
        self.status = "queued"
        self.progress = 0.0
        self.message = "queued"
        self.error: Optional[dict[str, Any]] = None
        self.result: Optional[np.ndarray] = None
        self.version = 0
        self.created = time.monotonic()
        self.started: Optional[float] = None
        self.finished: Optional[float] = None
        self.cancel_event = threading.Event()
        self._changed = threading.Condition()

    @property
    def active(self) -> bool:
        """Whether the job is queued or running."""
        return self.status in ACTIVE_STATES

    def _update(self, **changes: Any) -> None:
        with self._changed:
            for key, value in changes.items():
                setattr(self, key, value)
            self.version += 1
            self._changed.notify_all()

    def start(self) -> None:
        """Mark the job running."""
        self.started = time.monotonic()
        self._update(status="running", message="started")

    def report_progress(self, fraction: float, message: str) -> None:
        """Progress callback for the engine: record the fraction and message, stop if cancelled.

        Raises:
            JobCancelled: the job was cancelled, so the engine stops at its next report.
        """
        if self.cancel_event.is_set():
            raise JobCancelled()
        self._update(progress=min(1.0, max(0.0, float(fraction))), message=str(message)[:200])

    def finish(self, result: np.ndarray) -> None:
        """Store the label map and mark the job done."""
        self.finished = time.monotonic()
        self._update(status="done", progress=1.0, message="done", result=result)

    def fail(self, error: dict[str, Any]) -> None:
        """Mark the job failed with an error body (status, code, message, error_id)."""
        self.finished = time.monotonic()
        self._update(status="failed", message="failed", error=error)

    def mark_cancelled(self) -> None:
        """Mark the job cancelled after its worker stopped."""
        self.finished = time.monotonic()
        self._update(status="cancelled", message="cancelled")

    def cancel(self) -> bool:
        """Ask the job to stop; return whether it was still active."""
        if not self.active:
            return False
        self.cancel_event.set()
        if self.status == "queued":
            self.mark_cancelled()
        else:
            self._update(message="cancelling")
        return True

    def wait_for_change(self, known_version: int, timeout_s: float) -> None:
        """Block until ``version`` differs from ``known_version`` or ``timeout_s`` passes."""
        with self._changed:
            self._changed.wait_for(lambda: self.version != known_version, timeout=timeout_s)

    def snapshot(self) -> dict[str, Any]:
        """Return the JSON status of the job."""
        with self._changed:
            elapsed = None
            if self.started is not None:
                elapsed = (self.finished or time.monotonic()) - self.started
            return {
                "job_id": self.id,
                "session_id": self.session_id,
                "status": self.status,
                "progress": self.progress,
                "message": self.message,
                "structures": self.structures,
                "version": self.version,
                "elapsed_s": elapsed,
                "error": self.error,
            }


def run_job(job: AutoJob, work: Callable[[AutoJob], np.ndarray], error_body: Callable[[Exception], dict[str, Any]]) -> None:
    """Run ``work`` for ``job`` in the calling thread and record how it ended.

    ``error_body`` turns an exception into the error body stored on a failed job.
    """
    if job.cancel_event.is_set():
        if job.active:
            job.mark_cancelled()
        return
    job.start()
    logger.info("Job %s started on session %s: %d structures", job.id, job.session_id, len(job.structures))
    try:
        result = work(job)
    except JobCancelled:
        job.mark_cancelled()
    except Exception as error:  # noqa: BLE001 - every failure must end the job and reach the client
        if job.cancel_event.is_set():
            job.mark_cancelled()
        else:
            job.fail(error_body(error))
    else:
        if job.cancel_event.is_set():
            job.mark_cancelled()
        else:
            job.finish(result)
    elapsed = (job.finished or time.monotonic()) - (job.started or job.created)
    logger.info("Job %s on session %s ended: %s after %.2f s", job.id, job.session_id, job.status, elapsed)
