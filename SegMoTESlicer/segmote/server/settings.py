"""Limits and options of one server process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

MEBIBYTE = 1 << 20

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_MAX_SESSIONS = 16
# Thirty minutes: a reader may leave a study open while dictating another.
DEFAULT_SESSION_IDLE_TIMEOUT_SECONDS = 1800.0
# A 512 x 512 x 1000 int16 CT is 500 MiB raw and about 250 MiB compressed.
DEFAULT_MAX_UPLOAD_MB = 1024.0
# Slice features cached per session, on the model's device. One LiteMedSAM
# slice takes 12 MiB (4 MiB embedding plus 8 MiB early features, float32),
# so 512 MiB keeps about 40 slices, and 16 sessions take at most 8 GiB.
DEFAULT_CACHE_MB = 512.0

# An upload may expand to this many times its byte limit when decompressed
# (zlib stream, gzip inside a .nii.gz, deflate inside a zip). This is an
# estimate: zlib shrinks CT by 2-5 times, and a volume that is mostly air
# more, so 8 leaves room without letting a small upload fill the memory.
EXPANSION_LIMIT_RATIO = 8

# Body limit for JSON requests (prompts, structure lists).
MAX_JSON_BODY_BYTES = 1 * MEBIBYTE


@dataclass(frozen=True)
class ServerSettings:
    """Options of one server process.

    Attributes:
        max_sessions: sessions open at once; one more gets HTTP 503.
        session_idle_timeout_s: seconds without a request after which a session expires.
        max_upload_bytes: largest upload body accepted; a larger one gets HTTP 413.
        cache_bytes: slice-feature cache per session.
        token: the bearer token clients must send, or None for no authentication.
    """

    max_sessions: int = DEFAULT_MAX_SESSIONS
    session_idle_timeout_s: float = DEFAULT_SESSION_IDLE_TIMEOUT_SECONDS
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * MEBIBYTE)
    cache_bytes: int = int(DEFAULT_CACHE_MB * MEBIBYTE)
    token: Optional[str] = None

    @property
    def max_expanded_bytes(self) -> int:
        """Largest decompressed upload accepted."""
        return self.max_upload_bytes * EXPANSION_LIMIT_RATIO

    @property
    def reap_interval_s(self) -> float:
        """Seconds between two passes of the reaper: a quarter of the idle timeout, 0.2 s to 30 s."""
        return min(30.0, max(0.2, self.session_idle_timeout_s / 4))
