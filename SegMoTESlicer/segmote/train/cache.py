"""Encoder-output cache: each curated slice is encoded once, and training reads only the cache.

The image encoder is frozen, so its outputs never change during training.
For each slice the cache stores one safetensors file with

- ``embedding``: float16 ``(256, 64, 64)``, the image embedding;
- ``early``: float16 ``(C, 64, 64)``, the early encoder feature map average-pooled
  to 64 x 64 (the MoTE feature fusion pools it to that size anyway, see
  :mod:`segmote.model.mote`), which quarters LiteMedSAM's 128 x 128 map;
- ``masks``: uint8 ``(N, 256, 256)``, one mask per structure in the decoder's
  low-resolution frame (the padded encoder input, downsampled to 256 x 256);

and, in the file's metadata, the sample's provenance and the structure names.
The metadata also marks which structures passed curation (prompted targets)
and which are complete annotations of an automatic-segmentation class. The
latter include empty masks, so that the prompt tokens also learn when a
structure is absent.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from ..engine.preprocess import prepare_slice
from ..model.backbones import Backbone
from .curation import quality_scores
from .sources import SliceSample

logger = logging.getLogger(__name__)

# Side of the cached early feature map (the image embedding's side).
EARLY_CACHE_SIDE = 64

# Sets whose annotation of the automatic-segmentation classes is complete,
# so a missing structure on a slice means the structure is absent there.
COMPLETE_ANNOTATION_SETS = ("ct_abdomen_small", "ct_slices_2d", "abdomen_ct_curvas")


@dataclass
class CachedSlice:
    """One cached slice, loaded for training.

    Attributes:
        key, dataset, modality, patient: provenance (see :class:`SliceSample`).
        embedding: float16 ``(256, 64, 64)``.
        early: float16 ``(C, 64, 64)``.
        masks: bool ``(N, 256, 256)`` in the low-resolution decoder frame.
        structures: the N structure names.
        prompted: per structure, whether it passed curation as a prompted target.
        auto: per structure, whether it is a complete annotation of an automatic class.
    """

    key: str
    dataset: str
    modality: str
    patient: str
    embedding: torch.Tensor
    early: torch.Tensor
    masks: torch.Tensor
    structures: list[str]
    prompted: list[bool]
    auto: list[bool]


def cache_path(cache_dir: Path, key: str) -> Path:
    """Return the cache file of a sample key."""
    return cache_dir / f"{key}.safetensors"


def build_cache(
    samples: Iterable[SliceSample],
    backbone: Backbone,
    cache_dir: Path,
    auto_structures: Iterable[str],
    curation_log: Optional[Path] = None,
) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Curate and encode samples into ``cache_dir``; already cached keys are skipped.

    Args:
        samples: slices with their masks.
        backbone: the frozen backbone whose encoder outputs are stored.
        cache_dir: output folder (created).
        auto_structures: names of the automatic-segmentation classes.
        curation_log: JSON-lines file receiving each (slice, structure) score and verdict.

    Returns:
        ``(counts, keys)``: per data set, counts of ``kept`` and ``dropped``
        (slice, structure) pairs; and the keys of the cached slices of these samples.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    auto_names = set(auto_structures)
    counts: dict[str, dict[str, int]] = {}
    keys: list[str] = []
    log_handle = curation_log.open("a", encoding="utf-8") if curation_log else None
    device = next(backbone.parameters()).device
    started = time.monotonic()
    encoded = 0
    try:
        for sample in samples:
            set_counts = counts.setdefault(sample.dataset, {"kept": 0, "dropped": 0})

            # Curate each structure of the slice.
            prompted = {}
            for name, mask in sample.masks.items():
                scores = quality_scores(sample.image, mask)
                failures = scores.failures()
                prompted[name] = not failures
                set_counts["kept" if not failures else "dropped"] += 1
                if log_handle:
                    record = {"key": sample.key, "dataset": sample.dataset, "structure": name,
                              "kept": not failures, "failed": failures, **scores.as_dict()}
                    log_handle.write(json.dumps(record) + "\n")

            # Complete annotations also give empty masks for absent automatic classes.
            masks = dict(sample.masks)
            if sample.dataset in COMPLETE_ANNOTATION_SETS:
                for name in auto_names:
                    masks.setdefault(name, np.zeros(sample.image.shape[:2], dtype=bool))
            auto = {name: name in auto_names and sample.dataset in COMPLETE_ANNOTATION_SETS for name in masks}
            if not any(prompted.values()) and not any(auto.values()):
                continue
            path = cache_path(cache_dir, sample.key)
            keys.append(sample.key)
            if path.is_file():
                continue

            # Encode once and store.
            tensor, transform = prepare_slice(sample.image, sample.spacing_rc, backbone.info.image_size)
            with torch.no_grad():
                embedding, early = backbone.encode(tensor.to(device))
            early = F.adaptive_avg_pool2d(early.float(), EARLY_CACHE_SIDE)
            names = list(masks)
            low_res = torch.cat([transform.mask_to_low_res(masks[name], 1.0) > 0 for name in names])  # (N, 1, 256, 256)
            metadata = {
                "key": sample.key, "dataset": sample.dataset, "modality": sample.modality, "patient": sample.patient,
                "structures": names, "prompted": [prompted.get(name, False) for name in names],
                "auto": [auto[name] for name in names], "shape_rc": list(transform.shape_rc),
                "resized_rc": list(transform.resized_rc), "spacing_rc": list(sample.spacing_rc),
            }
            tensors = {
                "embedding": embedding[0].to(torch.float16).cpu().contiguous(),
                "early": early[0].to(torch.float16).cpu().contiguous(),
                "masks": low_res[:, 0].to(torch.uint8).cpu().contiguous(),
            }
            partial = path.with_suffix(".partial")
            save_file(tensors, str(partial), metadata={"sample": json.dumps(metadata)})
            partial.replace(path)
            encoded += 1
            if encoded % 10 == 0:
                logger.info("Encoded %d slices (%.1f s per slice)", encoded, (time.monotonic() - started) / encoded)
    finally:
        if log_handle:
            log_handle.close()
    return counts, keys


def load_cached_slice(path: Path) -> CachedSlice:
    """Load one cache file written by :func:`build_cache`."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = json.loads(handle.metadata()["sample"])
        embedding = handle.get_tensor("embedding")
        early = handle.get_tensor("early")
        masks = handle.get_tensor("masks").bool()
    return CachedSlice(
        metadata["key"], metadata["dataset"], metadata["modality"], metadata["patient"],
        embedding, early, masks, metadata["structures"], metadata["prompted"], metadata["auto"],
    )


def load_cache(cache_dir: Path, keys: Optional[Iterable[str]] = None) -> list[CachedSlice]:
    """Load the cached slices of ``keys`` (default: every file of the folder), sorted by key."""
    if keys is None:
        paths = sorted(cache_dir.glob("*.safetensors"))
    else:
        paths = [cache_path(cache_dir, key) for key in sorted(set(keys))]
    return [load_cached_slice(path) for path in paths]
