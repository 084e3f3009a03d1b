"""From a 2-D slice to the encoder input, and from the decoder's logits back to the slice.

The slice is resized so that its longer physical side fills the encoder's
square input, then padded at the bottom and right. Pixels keep their physical
aspect ratio, so a coronal slice of a 0.8 x 0.8 x 3 mm CT is not squashed.
This is LiteMedSAM's and SAM's own convention (resize the longest side, pad).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# SAM-family decoders return logits at this side, whatever the input size.
LOW_RES_SIZE = 256


@dataclass(frozen=True)
class SliceTransform:
    """Mapping between a slice ``(R, C)`` and the encoder input ``(S, S)``.

    Attributes:
        shape_rc: slice shape ``(R, C)``.
        resized_rc: shape of the resized slice inside the padded input.
        image_size: side ``S`` of the encoder input.
    """

    shape_rc: tuple[int, int]
    resized_rc: tuple[int, int]
    image_size: int

    @property
    def scale_rc(self) -> tuple[float, float]:
        """Model pixels per slice pixel along rows and columns."""
        return (self.resized_rc[0] / self.shape_rc[0], self.resized_rc[1] / self.shape_rc[1])

    def rc_to_xy(self, rc: np.ndarray) -> np.ndarray:
        """Map slice positions ``(N, 2)`` as (row, col) to model input ``(N, 2)`` as (x, y)."""
        rc = np.asarray(rc, dtype=np.float64).reshape(-1, 2)
        # Pixel centres: slice pixel r covers [r, r + 1) before scaling.
        y = (rc[:, 0] + 0.5) * self.scale_rc[0] - 0.5
        x = (rc[:, 1] + 0.5) * self.scale_rc[1] - 0.5
        return np.stack([x, y], axis=1)

    def logits_to_slice(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """Resize low-resolution logits ``(B, 1, 256, 256)`` to slice logits ``(B, 1, R, C)``."""
        S = self.image_size
        logits = F.interpolate(low_res_logits, size=(S, S), mode="bilinear", align_corners=False)
        logits = logits[..., : self.resized_rc[0], : self.resized_rc[1]]
        return F.interpolate(logits, size=self.shape_rc, mode="bilinear", align_corners=False)

    def mask_to_low_res(self, mask: np.ndarray, logit_magnitude: float = 8.0) -> torch.Tensor:
        """Turn a binary slice mask ``(R, C)`` into low-resolution logits ``(1, 1, 256, 256)``.

        Inside the mask the logits are ``+logit_magnitude``, outside ``-logit_magnitude``.
        """
        S = self.image_size
        tensor = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
        resized = F.interpolate(tensor, size=self.resized_rc, mode="bilinear", align_corners=False)
        padded = F.pad(resized, (0, S - self.resized_rc[1], 0, S - self.resized_rc[0]))
        low = F.interpolate(padded, size=(LOW_RES_SIZE, LOW_RES_SIZE), mode="bilinear", align_corners=False)
        return (low * 2.0 - 1.0) * logit_magnitude


def slice_transform(shape_rc: tuple[int, int], spacing_rc: tuple[float, float], image_size: int) -> SliceTransform:
    """Return the transform that fits a slice of ``shape_rc`` pixels of ``spacing_rc`` mm into ``image_size``."""
    R, C = shape_rc
    height_mm, width_mm = R * spacing_rc[0], C * spacing_rc[1]
    scale = image_size / max(height_mm, width_mm)
    resized = (
        int(min(image_size, max(1, round(height_mm * scale)))),
        int(min(image_size, max(1, round(width_mm * scale)))),
    )
    return SliceTransform((int(R), int(C)), resized, int(image_size))


def prepare_slice(
    image: np.ndarray, spacing_rc: tuple[float, float], image_size: int
) -> tuple[torch.Tensor, SliceTransform]:
    """Resize and pad a slice for the encoder.

    Args:
        image: ``(R, C)`` or ``(R, C, 3)`` float values in [0, 1].
        spacing_rc: pixel size (mm) along rows and columns; ``(1, 1)`` for plain 2-D images.
        image_size: the encoder's input side ``S``.

    Returns:
        ``(tensor, transform)``: the input ``(1, 3, S, S)`` float32 in [0, 1] and its :class:`SliceTransform`.
    """
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    transform = slice_transform(array.shape[:2], spacing_rc, image_size)
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]  # (1, 3, R, C)
    resized = F.interpolate(tensor, size=transform.resized_rc, mode="bilinear", align_corners=False, antialias=True)
    resized = resized.clamp_(0.0, 1.0)
    S = image_size
    padded = F.pad(resized, (0, S - transform.resized_rc[1], 0, S - transform.resized_rc[0]))
    return padded.contiguous(), transform
