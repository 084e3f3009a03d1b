"""Running the model for a session: one prompt, or an auto job, behind the model lock.

These functions block; the app calls them from worker threads. Lock order:
a session's lock first, then the model lock, never the other way round.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from ..protocol import SegmentPrompt
from ..wire import MASK_COMPRESSION_LEVEL, RegionDescription, changed_box, encode_array
from .errors import NotFoundError
from .jobs import AutoJob
from .sessions import SegmentState, Session

if TYPE_CHECKING:
    from ..engine.session import VolumeSession

logger = logging.getLogger(__name__)


def _milliseconds(start: float, end: float) -> float:
    return (end - start) * 1000.0


def segment_on_session(
    session: Session,
    prompt: SegmentPrompt,
    coordinate_system: str,
    base_revision: int,
    model_lock: threading.Lock,
) -> tuple[RegionDescription, bytes]:
    """Segment one prompt and return the region of the segment's mask that changed, encoded.

    The region is the bounding box of the voxels where the new mask differs
    from the mask at ``base_revision``, the revision the client has. When
    the client has another revision than the server's latest (a lost
    response, a retried request), the region bounds the whole new mask and
    ``replace`` instructs the client to clear its copy first.
    """
    start = time.perf_counter()
    with session.lock:
        locked = time.perf_counter()
        volume_session = session.volume_session
        if volume_session is None:
            raise NotFoundError(f"session {session.id} was closed; open a new session", field="session_id")

        # Run the model.
        with model_lock:
            model_start = time.perf_counter()
            result = volume_session.segment(prompt, coordinate_system)
            encoder_calls = volume_session.encoder_calls
        model_end = time.perf_counter()

        # Diff against the client's copy and encode the changed box.
        state = session.segments.get(prompt.name)
        current_revision = state.revision if state is not None else 0
        replace = base_revision != current_revision
        previous = None if (replace or state is None) else state.mask
        box = changed_box(previous, result.mask)
        description, payload = encode_array(result.mask[box], MASK_COMPRESSION_LEVEL)
        session.segments[prompt.name] = SegmentState(result.mask, current_revision + 1)
    end = time.perf_counter()

    timings = {
        "session_wait": _milliseconds(start, locked),
        "model_wait": _milliseconds(locked, model_start),
        "model": _milliseconds(model_start, model_end),
        "diff_encode": _milliseconds(model_end, end),
    }
    region = RegionDescription(
        name=prompt.name,
        revision=current_revision + 1,
        replace=replace,
        offset_kji=tuple(b.start for b in box),  # type: ignore[arg-type]
        array=description,
        iou=float(result.iou),
        slices=tuple((str(view), int(index)) for view, index in result.slices),
        encoder_calls=int(encoder_calls),
        timings_ms=timings,
    )
    logger.debug(
        "Session %s segment: %d slices, region %s, %d bytes, model %.1f ms, total %.1f ms",
        session.id, len(result.slices), list(description.shape), len(payload), timings["model"], _milliseconds(start, end),
    )
    return region, payload


def auto_on_session(volume_session: "VolumeSession", job: AutoJob, model_lock: threading.Lock) -> np.ndarray:
    """Run auto-segmentation for ``job``; blocks other model calls while it runs."""
    with model_lock:
        if job.cancel_event.is_set():
            return np.zeros(volume_session.volume.grid.shape_kji, dtype=np.uint8)
        return volume_session.auto(job.structures, progress=job.report_progress, cancel=job.cancel_event)
