"""Work off the main thread: progress, cancel, and batch runs.

Slicer's GUI runs on the main thread, and VTK and Qt objects must be touched
only there. A :class:`BackgroundJob` runs a plain function on a worker thread.
The function reports progress through a callback and checks a cancel event,
while the main thread polls :meth:`BackgroundJob.state` from a timer and
updates the progress bar. This module imports neither slicer, Qt nor torch.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Optional, Sequence, TypeVar

from segmote.errors import SegMoTEError

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]
ResultType = TypeVar("ResultType")
ItemType = TypeVar("ItemType")


class JobCancelled(Exception):
    """The user cancelled the work."""


def user_message(error: BaseException) -> str:
    """Return a one-line message for an error, without a traceback.

    Errors meant for users (SegMoTE's own, and the client's) keep their
    message as it is. Any other error gets its type name, so a bug report can name it.
    """
    if isinstance(error, SegMoTEError) or type(error).__name__.endswith("ClientError"):
        return str(error)
    if isinstance(error, JobCancelled):
        return "cancelled"
    return f"{type(error).__name__}: {error}"


@dataclass
class JobState:
    """A snapshot of a background job, read on the main thread.

    Attributes:
        running: the worker thread has not finished yet.
        fraction: progress in [0, 1].
        message: the latest progress message.
        result: the function's return value once it finished without error.
        error: the exception it raised, if any (``JobCancelled`` after a cancel).
    """

    running: bool
    fraction: float
    message: str
    result: Any = None
    error: Optional[BaseException] = None


class BackgroundJob(Generic[ResultType]):
    """Runs ``function(progress, cancel)`` on a daemon thread.

    ``function`` receives a progress callback ``(fraction, message)`` and a
    :class:`threading.Event` that is set when the user cancels; it should stop
    soon after and raise :class:`JobCancelled`.
    """

    def __init__(self, function: Callable[[ProgressCallback, threading.Event], ResultType], name: str = "SegMoTE job"):
        self._function = function
        self._name = name
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._state = JobState(running=False, fraction=0.0, message="")
        self._thread: Optional[threading.Thread] = None
        self._started_seconds = 0.0

    def start(self) -> None:
        """Start the worker thread (once)."""
        if self._thread is not None:
            raise RuntimeError(f"{self._name} was already started")
        self._state.running = True
        self._started_seconds = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Ask the function to stop; :meth:`state` reports it once it has."""
        self._cancel.set()

    @property
    def cancel_event(self) -> threading.Event:
        """The event the function checks."""
        return self._cancel

    def state(self) -> JobState:
        """Return a copy of the current state (thread-safe)."""
        with self._lock:
            return JobState(**vars(self._state))

    def wait(self, timeout_seconds: Optional[float] = None) -> JobState:
        """Block until the job ends (tests and Slicer's self-test); return its state."""
        if self._thread is not None:
            self._thread.join(timeout_seconds)
        return self.state()

    def _progress(self, fraction: float, message: str) -> None:
        with self._lock:
            self._state.fraction = min(1.0, max(0.0, float(fraction)))
            self._state.message = message

    def _run(self) -> None:
        result = None
        error: Optional[BaseException] = None
        try:
            result = self._function(self._progress, self._cancel)
            if self._cancel.is_set():
                error = JobCancelled()
        except BaseException as caught:  # reported to the main thread, which shows it
            error = caught
            if not isinstance(caught, (JobCancelled, SegMoTEError)):
                logger.exception("%s failed", self._name)
        elapsed = time.monotonic() - self._started_seconds
        logger.info("%s ended after %.1f s (%s)", self._name, elapsed, "ok" if error is None else user_message(error))
        with self._lock:
            self._state.running = False
            self._state.result = result
            self._state.error = error
            if error is None:
                self._state.fraction = 1.0


@dataclass
class BatchEntry:
    """The outcome for one batch item: ``done``, ``failed`` or ``cancelled``, with a message for failures."""

    name: str
    status: str
    message: str = ""
    seconds: float = 0.0


@dataclass
class BatchSummary:
    """All batch outcomes, in input order."""

    entries: list[BatchEntry] = field(default_factory=list)

    def count(self, status: str) -> int:
        """Return how many items ended with ``status``."""
        return sum(1 for entry in self.entries if entry.status == status)

    def text(self) -> str:
        """Return the summary shown to the user: counts, then one line per item."""
        lines = [
            f"{self.count('done')} done, {self.count('failed')} failed, {self.count('cancelled')} cancelled "
            f"of {len(self.entries)} volumes."
        ]
        for entry in self.entries:
            if entry.status == "done":
                lines.append(f"{entry.name}: done in {entry.seconds:.1f} s")
            elif entry.status == "failed":
                lines.append(f"{entry.name}: failed: {entry.message}")
            else:
                lines.append(f"{entry.name}: cancelled")
        return "\n".join(lines)


def run_batch(
    items: Sequence[ItemType],
    names: Sequence[str],
    run_one: Callable[[ItemType, ProgressCallback, threading.Event], ResultType],
    progress: ProgressCallback,
    cancel: threading.Event,
    on_done: Optional[Callable[[int, ResultType], None]] = None,
) -> BatchSummary:
    """Run ``run_one`` on each item in turn; one failure does not stop the others.

    Args:
        items: the inputs (for the module: a volume's array and geometry).
        names: a display name per item.
        run_one: does one item; gets a progress callback for that item and the cancel event.
        progress: overall progress ``(fraction, message)``; each item gets an equal share.
        cancel: when set, the running item is asked to stop and the rest are marked cancelled.
        on_done: called with ``(item index, result)`` after each successful item.
    """
    if len(items) != len(names):
        raise ValueError(f"{len(items)} items but {len(names)} names")
    summary = BatchSummary()
    count = len(items)
    for number, (item, name) in enumerate(zip(items, names)):
        if cancel.is_set():
            summary.entries.append(BatchEntry(name, "cancelled"))
            continue

        def item_progress(fraction: float, message: str, number: int = number, name: str = name) -> None:
            progress((number + min(1.0, max(0.0, fraction))) / count, f"{name} ({number + 1}/{count}): {message}")

        started = time.monotonic()
        item_progress(0.0, "started")
        try:
            result = run_one(item, item_progress, cancel)
            if cancel.is_set():
                raise JobCancelled()
        except JobCancelled:
            summary.entries.append(BatchEntry(name, "cancelled"))
            continue
        except Exception as error:  # one volume's failure is reported, the batch goes on
            if not isinstance(error, SegMoTEError):
                logger.exception("Batch item %s failed", name)
            summary.entries.append(BatchEntry(name, "failed", user_message(error), time.monotonic() - started))
            continue
        summary.entries.append(BatchEntry(name, "done", seconds=time.monotonic() - started))
        if on_done is not None:
            on_done(number, result)
    progress(1.0, "finished")
    return summary
