"""Prompt-free segmentation of named structures through a volume, with SegMoTE's learned prompt tokens.

Slices are visited in increasing axial index. On each slice, every requested
structure is decoded in ``AUTO_ROUNDS`` progressive rounds. The first round's
dense prompt is the structure's mask on the previous slice, or "no mask" when
it was absent there. Each later round gets the previous round's logits. A mask is kept when it is not empty and its predicted IoU reaches
:data:`AUTO_MIN_IOU`. Where structures overlap, the earlier one in the
request keeps the voxel.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np
import torch

from ..errors import InputError
from .volume import label_dtype

if TYPE_CHECKING:
    from .session import VolumeSession

logger = logging.getLogger(__name__)

# Progressive rounds per slice; the learned prompt tokens were trained with 3.
AUTO_ROUNDS = 3

# A slice's mask is dropped when its predicted IoU is below this.
AUTO_MIN_IOU = 0.5

# Slices are always taken along this view: the prompt tokens were trained on axial slices.
AUTO_VIEW = "axial"


def check_structures(structures: list[str], known: list[str]) -> list[str]:
    """Return the requested names, normalised; raise :class:`InputError` naming the known ones otherwise."""
    names = [name.strip().lower() for name in structures if name.strip()]
    if not names:
        raise InputError(f"no structure named; use --structures with some of: {', '.join(known)}")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise InputError(
            f"unknown structure(s) {', '.join(unknown)}: these adapters segment {', '.join(known)}"
        )
    if len(set(names)) != len(names):
        raise InputError(f"structure names repeat in {', '.join(names)}; list each once")
    return names


@torch.inference_mode()
def auto_segment(
    session: "VolumeSession",
    structures: list[str],
    progress: Optional[Callable[[float, str], None]] = None,
    cancel: Optional[threading.Event] = None,
) -> np.ndarray:
    """Label named structures in the session's volume with no click.

    Args:
        session: the volume session (its engine must have SegMoTE adapters).
        structures: names from the adapters' structure list; label value k = the k-th name.
        progress: called after each slice with (fraction done, message).
        cancel: when set, the run stops before the next slice.

    Returns:
        Label map ``(K, J, I)`` on the volume grid (uint8 for up to 255 structures).

    Raises:
        InputError: no adapters, or an unknown structure name.
        InterruptedError: ``cancel`` was set.
    """
    engine = session.engine
    adapters = engine.adapters
    if adapters is None or not getattr(adapters, "structures", None):
        raise InputError("auto-segmentation needs SegMoTE adapters with named structures; drop --adapters none")
    names = check_structures(structures, list(adapters.structures))
    class_index = torch.tensor([adapters.structures.index(name) for name in names], device=engine.device)
    backbone = engine.backbone
    K = len(names)

    labels = np.zeros(session.volume.grid.shape_kji, dtype=label_dtype(K))
    seeds: list[Optional[np.ndarray]] = [None] * K  # previous slice's mask per structure
    count = session.slice_count(AUTO_VIEW)
    started = time.monotonic()
    for index in range(count):
        if cancel is not None and cancel.is_set():
            raise InterruptedError("auto-segmentation cancelled")
        features = session.features(AUTO_VIEW, index)
        transform = features.transform

        # First round: previous slice's mask as the dense prompt, else "no mask".
        previous = torch.stack(
            [
                session.mask_to_logits(seed, transform)[0] if seed is not None else torch.zeros(1, 256, 256, device=engine.device)
                for seed in seeds
            ]
        )  # (K, 1, 256, 256)
        _, no_mask = backbone.prompt_encoder(None, None, None)
        _, seeded = backbone.prompt_encoder(None, None, previous)
        has_seed = torch.tensor([seed is not None for seed in seeds], device=engine.device)
        dense = torch.where(has_seed[:, None, None, None], seeded, no_mask.expand(K, -1, -1, -1))

        # Progressive rounds, each fed the previous logits.
        embedding = features.embedding.expand(K, -1, -1, -1)
        early = features.early.expand(K, -1, -1, -1)
        for round_index in range(AUTO_ROUNDS):
            if round_index > 0:
                _, dense = backbone.prompt_encoder(None, None, logits)
            logits, iou, _ = adapters.decode_auto(backbone, embedding, early, class_index, dense)

        # Keep confident non-empty masks; the earlier structure wins overlaps.
        plane = np.zeros(features.geometry.shape_rc, dtype=labels.dtype)
        for k in range(K):
            mask = session.logits_to_mask(logits[k : k + 1], transform)
            keep = bool(mask.any()) and float(iou[k, 0]) >= AUTO_MIN_IOU
            seeds[k] = mask if keep else None
            if keep:
                plane[mask & (plane == 0)] = k + 1
        features.geometry.insert(labels, plane)

        if progress is not None:
            progress((index + 1) / count, f"slice {index + 1} of {count}")
    logger.info(
        "Auto-segmented %s on %d slices in %.1f s", ", ".join(names), count, time.monotonic() - started
    )
    return labels
