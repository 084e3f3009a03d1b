"""High-quality feature map for the expert tokens' masks.

The map fuses three sources at the decoder's upscaled resolution (4 x the
embedding side, 256 x 256 for SAM-family decoders):

- the decoder's own upscaled features ``(B, D/8, 4h, 4w)``, refined by two 1 x 1 convolutions;
- the image embedding ``(B, D, h, w)``;
- an early encoder feature map ``(B, C_early, h', w')`` (LiteMedSAM: TinyViT's first
  stage, 128 x 128; ViT-B: the first global-attention block, 64 x 64),
  average-pooled to ``(h, w)``.

The embedding and the early map are projected to a common width at ``(h, w)``,
summed, and upsampled 4 x by two stride-2 transposed convolutions. Working
at ``(h, w)`` before upsampling keeps the cost near 0.4 GMAC per mask, which
matters for training on a CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import nn


class HighQualityFeatures(nn.Module):
    """Fuse decoder, embedding and early encoder features into ``(B, D/8, 4h, 4w)``."""

    def __init__(self, token_dim: int, early_channels: int) -> None:
        super().__init__()
        hidden = token_dim // 4
        out_channels = token_dim // 8
        self.project_embedding = nn.Conv2d(token_dim, hidden, kernel_size=1)
        self.project_early = nn.Conv2d(early_channels, hidden, kernel_size=1)
        self.upsample = nn.Sequential(
            LayerNorm2d(hidden),
            nn.GELU(),
            nn.ConvTranspose2d(hidden, out_channels, kernel_size=2, stride=2),
            LayerNorm2d(out_channels),
            nn.GELU(),
            nn.ConvTranspose2d(out_channels, out_channels, kernel_size=2, stride=2),
        )
        self.refine_decoder = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, kernel_size=1),
            nn.GELU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=1),
        )

    def forward(self, embedding: torch.Tensor, early: torch.Tensor, upscaled: torch.Tensor) -> torch.Tensor:
        """Return the fused map.

        Args:
            embedding: ``(B, D, h, w)`` image embedding.
            early: ``(B, C_early, h', w')`` early encoder features, any side that pools to ``(h, w)``.
            upscaled: ``(B, D/8, 4h, 4w)`` the decoder's upscaled features.
        """
        if early.shape[-2:] != embedding.shape[-2:]:
            early = F.adaptive_avg_pool2d(early, embedding.shape[-2:])
        early = early.to(embedding.dtype)
        fused = self.project_embedding(embedding) + self.project_early(early)  # (B, D / 4, h, w)
        return upscaled + self.refine_decoder(upscaled) + self.upsample(fused)
