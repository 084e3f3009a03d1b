"""The model behind one engine: backbone, optional SegMoTE adapters, device, encode and decode.

:class:`Engine` is shared by all volumes and by all server sessions. It keeps
no per-volume state and is not thread-safe, so callers serialise calls to it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..errors import InputError, ModelError
from ..model.backbones import DEFAULT_BACKBONE, Backbone, build_backbone
from .preprocess import SliceTransform

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")

# Encoder precisions. fp32 is the reference that the tests run; bf16 runs the
# encoder under autocast and is checked against fp32 in benchmarks/bench_engine.py.
PRECISIONS = ("fp32", "bf16")


def resolve_device(device: str) -> torch.device:
    """Return the torch device for ``auto``, ``cpu`` or ``cuda`` (``auto`` picks CUDA when present)."""
    if device not in DEVICES:
        raise InputError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was requested but no CUDA GPU is available; use --device cpu or auto")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class Prediction:
    """One decoded mask on one slice.

    Attributes:
        low_res_logits: ``(1, 1, 256, 256)`` logits in model space (feed back as a dense prompt).
        mask: ``(R, C)`` bool mask on the slice.
        iou: predicted IoU of the chosen output.
        expert: index of the SegMoTE expert token chosen, or None for the bare backbone.
    """

    low_res_logits: torch.Tensor
    mask: np.ndarray
    iou: float
    expert: Optional[int] = None


class Engine:
    """A backbone with optional SegMoTE adapters on one device.

    Build it with :meth:`load`. ``adapters`` is None when the bare backbone is used.
    """

    def __init__(
        self,
        backbone: Backbone,
        adapters: Optional[torch.nn.Module],
        device: torch.device,
        precision: str = "fp32",
    ) -> None:
        if precision not in PRECISIONS:
            raise InputError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        self.backbone = backbone
        self.adapters = adapters
        self.device = device
        self.precision = precision

    @classmethod
    def load(
        cls,
        backbone: str = DEFAULT_BACKBONE,
        checkpoint: Optional[str | Path] = None,
        adapters: Optional[str | Path] = "default",
        device: str = "auto",
        precision: str = "fp32",
    ) -> "Engine":
        """Build the backbone and load adapters.

        Args:
            backbone: registry name (see :data:`segmote.model.backbones.BACKBONES`).
            checkpoint: weights file for backbones that are not shipped.
            adapters: ``"default"`` (the shipped adapters for this backbone, when present),
                ``"none"``/None (the bare backbone), or a path to a ``.safetensors`` file.
            device: ``auto``, ``cpu`` or ``cuda``.
            precision: ``fp32`` or ``bf16`` (the image encoder under bfloat16 autocast).
        """
        if precision not in PRECISIONS:
            raise InputError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        torch_device = resolve_device(device)
        model = build_backbone(backbone, checkpoint, torch_device)
        loaded = _load_adapters(adapters, model)
        return cls(model, loaded, torch_device, precision)

    @property
    def structures(self) -> list[str]:
        """Structure names that auto-segmentation accepts (empty without adapters)."""
        return list(getattr(self.adapters, "structures", []) or [])

    @property
    def info(self) -> dict[str, Any]:
        """Backbone, device and adapter description, for logs, ``info`` and the server's health check."""
        adapters = None
        if self.adapters is not None:
            metadata = getattr(self.adapters, "metadata", {}) or {}
            adapters = {key: metadata.get(key) for key in ("name", "version", "path") if key in metadata}
        return {
            "backbone": self.backbone.info.name,
            "checkpoint_sha256": self.backbone.info.checkpoint_sha256,
            "device": str(self.device),
            "precision": self.precision,
            "adapters": adapters,
            "structures": self.structures,
        }

    @torch.inference_mode()
    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode one prepared slice ``(1, 3, S, S)`` in [0, 1]; return float32 (embedding, early features)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            embedding, early = self.backbone.encode(image.to(self.device))
        return embedding.float(), early.float()

    @torch.inference_mode()
    def decode(
        self,
        embedding: torch.Tensor,
        early: torch.Tensor,
        transform: SliceTransform,
        points_xy: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        box_xyxy: Optional[np.ndarray] = None,
        mask_logits: Optional[torch.Tensor] = None,
    ) -> Prediction:
        """Decode one mask for prompts in model input coordinates.

        Args:
            embedding: ``(1, 256, 64, 64)`` image embedding.
            early: early encoder features (used only by the adapters).
            transform: the slice's :class:`SliceTransform`.
            points_xy: ``(N, 2)`` points as (x, y) model pixels.
            point_labels: ``(N,)`` 1 = foreground, 0 = background.
            box_xyxy: ``(4,)`` box as (x0, y0, x1, y1) model pixels.
            mask_logits: ``(1, 1, 256, 256)`` previous logits, used as the dense prompt.
        """
        device = self.device
        points = None
        if points_xy is not None and len(points_xy):
            coords = torch.as_tensor(np.asarray(points_xy, dtype=np.float32), device=device)[None]
            labels = torch.as_tensor(np.asarray(point_labels, dtype=np.int64), device=device)[None]
            points = (coords, labels)
        boxes = None
        if box_xyxy is not None:
            boxes = torch.as_tensor(np.asarray(box_xyxy, dtype=np.float32), device=device).reshape(1, 4)
        masks = mask_logits.to(device) if mask_logits is not None else None
        sparse, dense = self.backbone.prompt_encoder(points=points, boxes=boxes, masks=masks)

        if self.adapters is not None:
            logits, iou, expert = self.adapters.decode_prompted(self.backbone, embedding, early, sparse, dense)
            return self._prediction(logits, iou[:, 0], transform, int(expert[0]))

        decoder_output = self.backbone.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.backbone.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=box_xyxy is None,
        )
        logits, iou = decoder_output
        choice = choose_output(iou[0], box_given=box_xyxy is not None)
        return self._prediction(logits[:, choice : choice + 1], iou[:, choice], transform, None)

    def _prediction(
        self, logits: torch.Tensor, iou: torch.Tensor, transform: SliceTransform, expert: Optional[int]
    ) -> Prediction:
        slice_logits = transform.logits_to_slice(logits.float())
        mask = (slice_logits[0, 0] > 0).cpu().numpy()
        return Prediction(logits.float().clone(), mask, float(iou[0]), expert)


# Choice of SAM output by prompt kind. A box is unambiguous, so it
# uses the single-mask output. Points alone use the first multimask output.
# NOTE: with the bare LiteMedSAM backbone, a click alone gives a nearly empty
# mask whichever output is kept (Dice below 0.05 for all four outputs on five
# organs of ct_abdomen_small), because LiteMedSAM was trained with boxes only.
POINT_OUTPUT_INDEX = 0


def choose_output(iou: torch.Tensor, box_given: bool) -> int:
    """Return the index of the decoder output to keep (see :data:`POINT_OUTPUT_INDEX`)."""
    if box_given:
        return 0
    return POINT_OUTPUT_INDEX


def _load_adapters(adapters: Optional[str | Path], backbone: Backbone) -> Optional[torch.nn.Module]:
    """Load SegMoTE adapters, or return None for the bare backbone."""
    if adapters is None or str(adapters).lower() == "none":
        return None
    try:
        from ..model import adapters as adapter_io
    except ImportError:
        if str(adapters) == "default":
            logger.warning("SegMoTE adapters are not available in this installation; using the bare backbone")
            return None
        raise ModelError("this installation cannot load SegMoTE adapters (segmote.model.adapters is missing)") from None
    if str(adapters) == "default":
        path = Path(adapter_io.DEFAULT_ADAPTERS)
        if not path.is_file() or backbone.info.name != "lite-medsam":
            logger.warning(
                "No shipped SegMoTE adapters for backbone %s; using the bare backbone", backbone.info.name
            )
            return None
    else:
        path = Path(adapters).expanduser()
        if not path.is_file():
            raise InputError(f"adapters file not found: {path}; pass --adapters PATH to a .safetensors file, or none")
    loaded = adapter_io.load_adapters(path, backbone)
    if isinstance(getattr(loaded, "metadata", None), dict):
        loaded.metadata.setdefault("path", str(path))
    return loaded
