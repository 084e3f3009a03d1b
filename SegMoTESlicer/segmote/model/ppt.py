"""PPT: learned prompt tokens that replace clicks, one token set per named structure.

For class ``k``, ``Q`` learned query tokens attend (multi-head attention) over
the layer-normed image embedding plus a learned 2-D positional encoding,
then a residual MLP and a LayerNorm follow. The ``Q`` resulting tokens take
the place of the sparse point/box tokens in the decoder. The attention,
positional encoding and MLP are shared by all classes; only the query tokens
are per class.

Segmentation runs in rounds: the caller feeds each round's low-resolution
logits back as the dense prompt of the next (see
:func:`segmote.model.adapters.SegMoTEAdapters.decode_auto`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PromptTokenizer(nn.Module):
    """Per-class learned prompt tokens pooled from the image embedding.

    Args:
        num_classes: number of named structures ``K``.
        token_dim: decoder width ``D``.
        num_queries: ``Q`` tokens per class.
        num_heads: attention heads.
        grid_side: side of the learned positional encoding (the embedding's side, 64).
    """

    def __init__(
        self, num_classes: int, token_dim: int = 256, num_queries: int = 2, num_heads: int = 8, grid_side: int = 64
    ) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_classes, num_queries, token_dim) * 0.02)
        self.image_norm = nn.LayerNorm(token_dim)
        # Separable learned positional encoding: one vector per row plus one per column.
        self.row_encoding = nn.Parameter(torch.randn(grid_side, token_dim) * 0.02)
        self.col_encoding = nn.Parameter(torch.randn(grid_side, token_dim) * 0.02)
        self.attention = nn.MultiheadAttention(token_dim, num_heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(token_dim, token_dim * 4), nn.GELU(), nn.Linear(token_dim * 4, token_dim))
        self.output_norm = nn.LayerNorm(token_dim)

    @property
    def num_classes(self) -> int:
        """Number of named structures."""
        return self.queries.shape[0]

    def forward(self, embedding: torch.Tensor, class_index: torch.Tensor) -> torch.Tensor:
        """Return prompt tokens ``(B, Q, D)`` for image embeddings ``(B, D, h, w)`` and classes ``(B,)`` long."""
        B, D, h, w = embedding.shape

        # Image tokens, normalised, with the learned position added to the keys.
        values = self.image_norm(embedding.flatten(2).transpose(1, 2))  # (B, h * w, D)
        position = self.row_encoding[:, None, :] + self.col_encoding[None, :, :]  # (G, G, D)
        if position.shape[:2] != (h, w):
            position = F.interpolate(position.permute(2, 0, 1)[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            position = position.permute(1, 2, 0)
        keys = values + position.reshape(1, h * w, D)

        # Class queries pool the image, then a residual MLP.
        queries = self.queries[class_index]  # (B, Q, D)
        pooled, _ = self.attention(queries, keys, values, need_weights=False)
        tokens = queries + pooled
        return self.output_norm(tokens + self.mlp(tokens))
