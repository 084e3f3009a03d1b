"""The prompts file: parsing and validation, shared by the CLI, server, client and Slicer module.

A prompts file is JSON::

    {"coordinate_system": "RAS",
     "segments": [{"name": "liver", "view": "axial",
                   "points": [[x, y, z]], "point_labels": [1],
                   "box": [[x0, y0, z0], [x1, y1, z1]],
                   "propagate": false, "propagate_limit": 200}]}

Coordinates are in the frame named by ``coordinate_system`` (``RAS`` or ``LPS``
millimetres, or ``IJK`` voxel indices). Label value k of the output is the k-th
segment (1-based). This module imports neither torch nor SimpleITK.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import InputError
from .geometry import COORDINATE_SYSTEMS, VIEWS

# Upper bound on propagate_limit; far more slices than any CT has.
MAX_PROPAGATE_LIMIT = 100_000

TOP_LEVEL_KEYS = ("coordinate_system", "segments")
SEGMENT_KEYS = ("name", "view", "points", "point_labels", "box", "propagate", "propagate_limit")


def _check_keys(raw: dict, known: tuple[str, ...], where: str) -> None:
    """Reject misspelled keys, which would otherwise silently fall back to defaults."""
    unknown = sorted(str(key) for key in raw if key not in known)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; valid keys are {', '.join(known)}")


@dataclass(frozen=True)
class SegmentPrompt:
    """Prompts for one segment, in the prompts file's coordinate system.

    Attributes:
        name: structure name (TotalSegmentator vocabulary where one exists).
        view: ``axial``, ``coronal`` or ``sagittal``.
        points: ``(N, 3)`` point positions, may be empty.
        point_labels: ``N`` labels, 1 = foreground, 0 = background.
        box: two opposite corners ``((x0, y0, z0), (x1, y1, z1))`` or None.
        propagate: whether to propagate through neighbouring slices.
        propagate_limit: maximum number of slices in each direction; None = until the structure ends.
    """

    name: str
    view: str = "axial"
    points: tuple[tuple[float, float, float], ...] = ()
    point_labels: tuple[int, ...] = ()
    box: Optional[tuple[tuple[float, float, float], tuple[float, float, float]]] = None
    propagate: bool = False
    propagate_limit: Optional[int] = None


@dataclass(frozen=True)
class PromptSet:
    """A parsed prompts file: a coordinate system and one or more segments."""

    coordinate_system: str
    segments: tuple[SegmentPrompt, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON-ready dictionary form."""
        segments = []
        for segment in self.segments:
            item: dict[str, Any] = {"name": segment.name, "view": segment.view}
            if segment.points:
                item["points"] = [list(p) for p in segment.points]
                item["point_labels"] = list(segment.point_labels)
            if segment.box is not None:
                item["box"] = [list(segment.box[0]), list(segment.box[1])]
            item["propagate"] = segment.propagate
            if segment.propagate_limit is not None:
                item["propagate_limit"] = segment.propagate_limit
            segments.append(item)
        return {"coordinate_system": self.coordinate_system, "segments": segments}


def _point(value: Any, where: str) -> tuple[float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise InputError(f"{where} must be a list of three numbers [x, y, z], got {value!r}")
    try:
        point = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{where} must contain numbers, got {value!r}") from None
    if not all(math.isfinite(v) for v in point):
        raise InputError(f"{where} contains NaN or infinity: {value!r}")
    return point  # type: ignore[return-value]


def _parse_segment(raw: Any, number: int) -> SegmentPrompt:
    where = f"segment {number}"
    if not isinstance(raw, dict):
        raise InputError(f"{where} must be a JSON object, got {type(raw).__name__}")
    _check_keys(raw, SEGMENT_KEYS, where)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{where} has no 'name': give each segment a structure name such as \"liver\"")
    where = f"segment {number} ({name!r})"

    view = str(raw.get("view", "axial")).lower()
    if view not in VIEWS:
        raise InputError(f"{where}: unknown view {raw.get('view')!r}; use one of {', '.join(VIEWS)}")

    raw_points = raw.get("points", []) or []
    if not isinstance(raw_points, list):
        raise InputError(f"{where}: 'points' must be a list of [x, y, z] points")
    points = tuple(_point(p, f"{where} point {i + 1}") for i, p in enumerate(raw_points))
    raw_labels = raw.get("point_labels")
    if raw_labels is None:
        labels: tuple[int, ...] = tuple(1 for _ in points)
    else:
        if not isinstance(raw_labels, list) or len(raw_labels) != len(points):
            raise InputError(
                f"{where}: 'point_labels' has {len(raw_labels) if isinstance(raw_labels, list) else raw_labels!r} "
                f"entries for {len(points)} points; give one label (1 = foreground, 0 = background) per point"
            )
        if any(label not in (0, 1) or isinstance(label, bool) for label in raw_labels):
            raise InputError(f"{where}: 'point_labels' must contain only 1 (foreground) or 0 (background), got {raw_labels}")
        labels = tuple(int(label) for label in raw_labels)

    box = None
    if raw.get("box") is not None:
        raw_box = raw["box"]
        if not isinstance(raw_box, list) or len(raw_box) != 2:
            raise InputError(f"{where}: 'box' must be two corners [[x0, y0, z0], [x1, y1, z1]], got {raw_box!r}")
        box = (_point(raw_box[0], f"{where} box corner 1"), _point(raw_box[1], f"{where} box corner 2"))

    if box is None and not points:
        raise InputError(f"{where} has no prompt: give a 'box' or at least one point in 'points'")
    if box is None and 1 not in labels:
        raise InputError(f"{where} has only background points: add a foreground point (label 1) or a box")

    propagate = raw.get("propagate", False)
    if not isinstance(propagate, bool):
        raise InputError(f"{where}: 'propagate' must be true or false, got {propagate!r}")
    limit = raw.get("propagate_limit")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_PROPAGATE_LIMIT:
            raise InputError(
                f"{where}: 'propagate_limit' must be a whole number of slices from 0 to {MAX_PROPAGATE_LIMIT}, got {limit!r}"
            )
    return SegmentPrompt(name.strip(), view, points, labels, box, propagate, limit)


def parse_prompts(data: Any) -> PromptSet:
    """Validate a prompts dictionary and return a :class:`PromptSet`.

    Raises:
        InputError: naming the invalid field and how to fix it.
    """
    if not isinstance(data, dict):
        raise InputError(f"the prompts must be a JSON object with 'coordinate_system' and 'segments', got {type(data).__name__}")
    _check_keys(data, TOP_LEVEL_KEYS, "the prompts")
    system = data.get("coordinate_system")
    if not isinstance(system, str) or system.upper() not in COORDINATE_SYSTEMS:
        raise InputError(
            f"invalid coordinate_system {system!r}: use one of {', '.join(COORDINATE_SYSTEMS)}"
        )
    raw_segments = data.get("segments")
    if not isinstance(raw_segments, list) or not raw_segments:
        raise InputError("the prompts contain no segments: add at least one entry to 'segments'")
    segments = tuple(_parse_segment(raw, number) for number, raw in enumerate(raw_segments, start=1))
    return PromptSet(system.upper(), segments)


def load_prompts(path: str | Path) -> PromptSet:
    """Read and validate a prompts JSON file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"prompts file not found: {path}; check the path (the README's 'Prompts file' shows the format)") from None
    except OSError as error:
        raise InputError(f"cannot read prompts file {path}: {error.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"prompts file {path} is not valid JSON (line {error.lineno}, column {error.colno}): {error.msg}") from None
    return parse_prompts(data)
