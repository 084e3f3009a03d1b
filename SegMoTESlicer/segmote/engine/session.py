"""One volume being segmented: slice features cache, prompt mapping, 3-D propagation.

A :class:`VolumeSession` binds a :class:`Volume` to an :class:`Engine`. It
scales intensities once, encodes each slice at most once while it stays in the
cache, maps prompts from patient or voxel coordinates to slices, and writes
masks back on the volume's own grid.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import InputError
from ..geometry import OBLIQUE_WARNING_DEGREES, SliceGeometry, check_view
from ..protocol import PromptSet, SegmentPrompt
from .intensity import IntensityScaling, intensity_scaling
from .predictor import Engine, Prediction
from .preprocess import SliceTransform, prepare_slice
from .prompts import SlicePrompt, map_segment_prompt
from .volume import Volume, label_dtype

logger = logging.getLogger(__name__)

# Embedding cache bound. One LiteMedSAM slice takes 4 MiB (embedding), plus
# 8 MiB of early features when adapters are loaded, in float32: 1 GiB keeps
# 256 slices for the bare backbone and about 85 with adapters.
DEFAULT_CACHE_BYTES = 1 << 30

# Propagation stops on a slice whose predicted IoU falls below this, or whose mask is empty.
PROPAGATION_MIN_IOU = 0.5

# The box that prompts the next slice is the previous mask's box grown by this
# fraction of its size on each side, at least one pixel. Structures widen or
# shift from slice to slice, and a tight box makes each mask shrink further.
# Measured on ct_abdomen_small (3-D Dice of liver, stomach, spleen, right
# kidney, aorta): margin 0 gave 0.68/0.30/0.40/0.70/0.35, 0.05 gave
# 0.91/0.40/0.71/0.75/0.89, 0.1 gave 0.89/0.81/0.79/0.87/0.89, 0.2 gave
# 0.63/0.38/0.36/0.86/0.89.
PROPAGATION_BOX_MARGIN = 0.1

ProgressCallback = Callable[[float, str], None]


@dataclass
class SliceFeatures:
    """Encoder outputs for one slice.

    Attributes:
        embedding: ``(1, 256, 64, 64)`` image embedding.
        early: early encoder feature map ``(1, C, h, w)``.
        geometry: where the slice lies in the volume and how it is oriented.
        transform: mapping between the slice and the model input.
    """

    embedding: torch.Tensor
    early: torch.Tensor
    geometry: SliceGeometry
    transform: SliceTransform

    @property
    def nbytes(self) -> int:
        """Memory held by the tensors."""
        return sum(t.element_size() * t.nelement() for t in (self.embedding, self.early))


class FeatureCache:
    """Least-recently-used cache of :class:`SliceFeatures`, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[tuple[str, int], SliceFeatures] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, int]) -> Optional[SliceFeatures]:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return item

    def put(self, key: tuple[str, int], item: SliceFeatures) -> None:
        if key in self._items:
            self.bytes -= self._items.pop(key).nbytes
        self._items[key] = item
        self.bytes += item.nbytes
        while self.bytes > self.max_bytes and len(self._items) > 1:
            _, evicted = self._items.popitem(last=False)
            self.bytes -= evicted.nbytes

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class SegmentResult:
    """The mask of one segment.

    Attributes:
        mask: ``(K, J, I)`` bool mask on the volume grid.
        slices: ``(view, index)`` of every slice that was predicted.
        iou: predicted IoU on the prompted slice.
        expert: SegMoTE expert token chosen on the prompted slice (None without adapters).
    """

    mask: np.ndarray
    slices: list[tuple[str, int]] = field(default_factory=list)
    iou: float = 0.0
    expert: Optional[int] = None


class VolumeSession:
    """Segmentation state for one volume: intensity scaling, slice features, previous logits."""

    def __init__(
        self,
        engine: Engine,
        volume: Volume,
        window: Optional[str] = None,
        modality: Optional[str] = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.engine = engine
        self.volume = volume
        self.scaling: IntensityScaling = intensity_scaling(volume, window, modality)
        self.cache = FeatureCache(cache_bytes)
        self.encoder_calls = 0
        self._last_logits: dict[tuple[str, str, int], torch.Tensor] = {}
        logger.info("Session on a %s volume, intensities: %s", volume.grid.shape_kji, self.scaling.description)

    # Slices and features

    def slice_count(self, view: str) -> int:
        """Number of slices of the volume in ``view``."""
        axis_ijk = self.volume.grid.view_axes()[check_view(view)]
        return self.volume.grid.size_ijk[axis_ijk]

    def slice_geometry(self, view: str, index: int) -> SliceGeometry:
        """Geometry of slice ``index`` in ``view``."""
        return SliceGeometry.for_view(self.volume.grid, view, index)

    def slice_image(self, geometry: SliceGeometry) -> np.ndarray:
        """Return the slice ``(R, C)`` or ``(R, C, 3)`` scaled to float32 [0, 1]."""
        return self.scaling.apply(geometry.extract(self.volume.array))

    def features(self, view: str, index: int) -> SliceFeatures:
        """Return the encoder outputs of slice ``index`` in ``view``, encoding it unless cached."""
        key = (check_view(view), int(index))
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        geometry = self.slice_geometry(view, index)
        tensor, transform = prepare_slice(
            self.slice_image(geometry), geometry.spacing_rc, self.engine.backbone.info.image_size
        )
        embedding, early = self.engine.encode(tensor)
        if self.engine.adapters is None:
            # Only the SegMoTE adapters read the early features; dropping them halves the cache's memory.
            early = early.new_zeros((early.shape[0], 0, *early.shape[2:]))
        self.encoder_calls += 1
        features = SliceFeatures(embedding, early, geometry, transform)
        self.cache.put(key, features)
        return features

    def logits_to_mask(self, low_res_logits: torch.Tensor, transform: SliceTransform) -> np.ndarray:
        """Threshold low-resolution logits ``(1, 1, 256, 256)`` to a slice mask ``(R, C)`` bool."""
        return (transform.logits_to_slice(low_res_logits.float())[0, 0] > 0).cpu().numpy()

    def mask_to_logits(self, mask: np.ndarray, transform: SliceTransform) -> torch.Tensor:
        """Turn a slice mask ``(R, C)`` into low-resolution logits ``(1, 1, 256, 256)`` for a dense prompt."""
        return transform.mask_to_low_res(mask).to(self.engine.device)

    # Prompted segmentation

    def segment(self, prompt: SegmentPrompt, coordinate_system: str) -> SegmentResult:
        """Segment one structure from its prompts, propagating through slices when asked.

        Raises:
            InputError: prompts outside the volume, on different slices, or a box of zero area.
        """
        grid = self.volume.grid
        slice_prompt = map_segment_prompt(prompt, coordinate_system, grid)
        obliquity = grid.obliquity_degrees(prompt.view)
        if obliquity > OBLIQUE_WARNING_DEGREES:
            logger.warning(
                "The volume axis used for %s slices is %.0f degrees from the patient axis; prompts snap to it",
                prompt.view,
                obliquity,
            )

        if slice_prompt.box_rc is None and self.engine.adapters is None and self.engine.backbone.info.name == "lite-medsam":
            logger.warning(
                "Segment %r has points but no box: the bare LiteMedSAM backbone was trained with boxes only and "
                "returns nearly empty masks for clicks alone; draw a box, or load SegMoTE adapters",
                prompt.name,
            )
        features = self.features(prompt.view, slice_prompt.index)
        refine_key = (prompt.name, prompt.view, slice_prompt.index)
        previous = self._last_logits.get(refine_key) if slice_prompt.box_rc is None else None
        prediction = self._decode(features, slice_prompt, previous)
        self._last_logits[refine_key] = prediction.low_res_logits

        mask = np.zeros(grid.shape_kji, dtype=bool)
        features.geometry.insert(mask, prediction.mask)
        result = SegmentResult(mask, [(prompt.view, slice_prompt.index)], prediction.iou, prediction.expert)
        if prompt.propagate and prediction.mask.any():
            limit = prompt.propagate_limit
            for step in (-1, 1):
                self._propagate(prompt.view, slice_prompt.index, step, prediction, limit, result)
        return result

    def _decode(
        self, features: SliceFeatures, prompt: SlicePrompt, mask_logits: Optional[torch.Tensor]
    ) -> Prediction:
        transform = features.transform
        points_xy = transform.rc_to_xy(prompt.points_rc) if len(prompt.points_rc) else None
        box_xyxy = None
        if prompt.box_rc is not None:
            corners = transform.rc_to_xy(np.asarray(prompt.box_rc).reshape(2, 2))
            box_xyxy = corners.reshape(4)
        return self.engine.decode(
            features.embedding,
            features.early,
            transform,
            points_xy=points_xy,
            point_labels=np.asarray(prompt.point_labels) if points_xy is not None else None,
            box_xyxy=box_xyxy,
            mask_logits=mask_logits,
        )

    def _propagate(
        self,
        view: str,
        start: int,
        step: int,
        seed: Prediction,
        limit: Optional[int],
        result: SegmentResult,
    ) -> None:
        """Follow the structure from slice ``start`` in direction ``step`` until it ends.

        Each slice is prompted with the box around the previous slice's mask.
        """
        count = self.slice_count(view)
        previous = seed
        index = start + step
        propagated = 0
        while 0 <= index < count and (limit is None or propagated < limit):
            box_rc = _mask_box_rc(previous.mask, PROPAGATION_BOX_MARGIN)
            features = self.features(view, index)
            prediction = self._decode(features, SlicePrompt(index, np.zeros((0, 2)), np.zeros(0, int), box_rc), None)
            if not prediction.mask.any() or prediction.iou < PROPAGATION_MIN_IOU:
                logger.debug("Propagation stopped at %s slice %d (IoU %.2f)", view, index, prediction.iou)
                break
            features.geometry.insert(result.mask, prediction.mask)
            result.slices.append((view, index))
            previous = prediction
            index += step
            propagated += 1

    def label_map(self, prompts: PromptSet, progress: Optional[ProgressCallback] = None) -> np.ndarray:
        """Segment every prompted structure into one label map ``(K, J, I)``; value k = k-th segment.

        Where two segments overlap, the voxel keeps the earlier segment's label.
        """
        count = len(prompts.segments)
        labels = np.zeros(self.volume.grid.shape_kji, dtype=label_dtype(count))
        for number, prompt in enumerate(prompts.segments, start=1):
            result = self.segment(prompt, prompts.coordinate_system)
            labels[result.mask & (labels == 0)] = number
            logger.info(
                "Segment %d (%s): %d voxels on %d slice(s), predicted IoU %.2f",
                number, prompt.name, int((labels == number).sum()), len(result.slices), result.iou,
            )
            if progress is not None:
                progress(number / count, prompt.name)
        return labels

    # Prompt-free segmentation

    def auto(
        self,
        structures: list[str],
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[threading.Event] = None,
    ) -> np.ndarray:
        """Label named structures with no prompt; value k = the k-th structure. Needs SegMoTE adapters."""
        if self.engine.adapters is None:
            raise InputError(
                "auto-segmentation needs SegMoTE adapters, but the bare backbone is loaded; "
                "drop --adapters none or pass --adapters PATH"
            )
        from .auto import auto_segment

        return auto_segment(self, structures, progress=progress, cancel=cancel)


def _mask_box_rc(mask: np.ndarray, margin: float = 0.0) -> tuple[float, float, float, float]:
    """Bounding box ``(r0, c0, r1, c1)`` (inclusive pixel indices) of a non-empty mask.

    The box grows by ``margin`` times its height and width on each side (at
    least one pixel when ``margin > 0``) and is clipped to the slice.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = float(rows[0]), float(rows[-1]), float(cols[0]), float(cols[-1])
    if margin > 0:
        dr = max(1.0, margin * (r1 - r0 + 1))
        dc = max(1.0, margin * (c1 - c0 + 1))
        r0, r1 = max(0.0, r0 - dr), min(mask.shape[0] - 1.0, r1 + dr)
        c0, c1 = max(0.0, c0 - dc), min(mask.shape[1] - 1.0, c1 + dc)
    return (r0, c0, r1, c1)
