"""Server sessions: one uploaded volume each, a registry with a capacity and idle expiry.

A session is busy while a request uses it (a lease) or an auto job runs on
it; the reaper never expires a busy session. Requests for an expired session
get HTTP 410, for an unknown or closed one HTTP 404.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import numpy as np

from .errors import CapacityError, NotFoundError, SessionExpiredError

if TYPE_CHECKING:
    from ..engine.session import VolumeSession
    from .jobs import AutoJob

logger = logging.getLogger(__name__)

# How many ids of expired and closed sessions are kept to tell 410 and 404 apart.
REMEMBERED_ENDED_SESSIONS = 10_000

# Seconds a client is asked to wait (Retry-After) when the server is full.
RETRY_AFTER_SECONDS = 30


@dataclass
class SegmentState:
    """The latest mask of one named segment in a session.

    Attributes:
        mask: ``(K, J, I)`` bool on the volume grid.
        revision: 1 for the first mask of this name, one more for each later one.
    """

    mask: np.ndarray
    revision: int


@dataclass
class Session:
    """One uploaded volume and its segmentation state.

    Attributes:
        id: random hex id, also the capability to use the session.
        volume_session: the engine's state for the volume.
        upload_bytes: size of the upload body.
        segments: latest mask per segment name.
        jobs: auto jobs by id, oldest first.
        lock: serialises prompts on this session (taken before the model lock).
        last_used: monotonic time of the last request end.
        leases: requests in progress.
    """

    id: str
    volume_session: "VolumeSession"
    upload_bytes: int
    created: float
    last_used: float
    segments: dict[str, SegmentState] = field(default_factory=dict)
    jobs: "OrderedDict[str, AutoJob]" = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    leases: int = 0

    @property
    def shape_kji(self) -> tuple[int, int, int]:
        """Volume shape in numpy order."""
        return tuple(self.volume_session.volume.grid.shape_kji)  # type: ignore[return-value]

    @property
    def busy(self) -> bool:
        """Whether a request or an auto job is using the session."""
        return self.leases > 0 or any(job.active for job in self.jobs.values())

    def close(self) -> None:
        """Cancel running jobs and drop the volume, masks and cached slice features."""
        for job in self.jobs.values():
            job.cancel()
        self.segments.clear()
        self.volume_session = None  # type: ignore[assignment]


class SessionRegistry:
    """Open sessions, with a capacity and an idle timeout.

    All methods are thread-safe. ``clock`` returns seconds (monotonic); tests
    pass their own.
    """

    def __init__(self, max_sessions: int, idle_timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_sessions = int(max_sessions)
        self.idle_timeout_s = float(idle_timeout_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._reserved = 0
        self._ended: OrderedDict[str, str] = OrderedDict()  # id -> "expired" or "closed"

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    @contextmanager
    def reservation(self) -> Iterator[None]:
        """Hold a place for a session while its upload is read and decoded.

        Raises:
            CapacityError: ``max_sessions`` sessions are open or being created.
        """
        with self._lock:
            if len(self._sessions) + self._reserved >= self.max_sessions:
                raise CapacityError(
                    f"server at capacity: {len(self._sessions)} sessions open and {self._reserved} being created, "
                    f"limit {self.max_sessions}; close a session or retry later",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
            self._reserved += 1
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= 1

    def add(self, volume_session: "VolumeSession", upload_bytes: int) -> Session:
        """Register a new session; call inside :meth:`reservation`."""
        now = self._clock()
        session = Session(secrets.token_hex(16), volume_session, upload_bytes, now, now)
        with self._lock:
            self._sessions[session.id] = session
        return session

    def _find(self, session_id: str) -> Session:
        """Return an open session. The caller must have acquired ``self._lock``."""
        session = self._sessions.get(session_id)
        if session is not None and not session.busy and self._idle_for(session) > self.idle_timeout_s:
            logger.info("Session %s expired after %.0f s idle", session_id, self._idle_for(session))
            self._end(session, "expired")
            session = None
        if session is None:
            ended = self._ended.get(session_id)
            if ended == "expired":
                raise SessionExpiredError(
                    f"session {session_id} expired after {self.idle_timeout_s:g} s without requests; open a new session"
                )
            reason = "was closed" if ended == "closed" else "does not exist"
            raise NotFoundError(f"session {session_id} {reason}; open a new session", field="session_id")
        return session

    @contextmanager
    def lease(self, session_id: str) -> Iterator[Session]:
        """Use a session for one request; it cannot expire meanwhile.

        Raises:
            NotFoundError: unknown or closed session (HTTP 404).
            SessionExpiredError: the session expired (HTTP 410).
        """
        with self._lock:
            session = self._find(session_id)
            session.leases += 1
        try:
            yield session
        finally:
            with self._lock:
                session.leases -= 1
                session.last_used = self._clock()

    def close(self, session_id: str) -> Session:
        """Close a session on the client's request and return it."""
        with self._lock:
            session = self._find(session_id)
            self._end(session, "closed")
        logger.info("Session %s closed by the client", session_id)
        return session

    def expire_idle(self) -> list[str]:
        """Expire every session idle for longer than the timeout; return their ids."""
        expired = []
        with self._lock:
            for session in list(self._sessions.values()):
                idle = self._idle_for(session)
                if not session.busy and idle > self.idle_timeout_s:
                    self._end(session, "expired")
                    expired.append((session.id, idle))
        for session_id, idle in expired:
            logger.info("Session %s expired after %.0f s idle", session_id, idle)
        return [session_id for session_id, _ in expired]

    def close_all(self) -> None:
        """Close every session (at shutdown)."""
        with self._lock:
            for session in list(self._sessions.values()):
                self._end(session, "closed")

    def snapshot(self) -> list[Session]:
        """Return the open sessions."""
        with self._lock:
            return list(self._sessions.values())

    def _idle_for(self, session: Session) -> float:
        return self._clock() - session.last_used

    def _end(self, session: Session, reason: str) -> None:
        """Remove a session and free its memory. The caller must have acquired ``self._lock``."""
        self._sessions.pop(session.id, None)
        session.close()
        self._ended[session.id] = reason
        while len(self._ended) > REMEMBERED_ENDED_SESSIONS:
            self._ended.popitem(last=False)
