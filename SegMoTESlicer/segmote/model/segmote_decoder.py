"""SAM's mask decoder with MoTE expert tokens, run around the frozen SAM modules.

Token order in the two-way transformer: SAM's IoU token, SAM's mask tokens,
then ``T`` learnable expert tokens, then the sparse prompt tokens. SAM's
tokens and the prompt tokens go through each block's original MLP; the
expert tokens go through a :class:`~segmote.model.mote.TokenRouter` in its
place. Every expert token has its own hypernetwork MLP, whose output times
the :class:`~segmote.model.hq_features.HighQualityFeatures` map is its mask.
The prediction is the mask of the expert token with the highest gate score
in the last block, scored by an IoU head of its own.

The SAM decoder is passed in at every call and never modified, so the bare
backbone keeps producing exactly its own outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from segment_anything.modeling.mask_decoder import MLP
from torch import nn

from .hq_features import HighQualityFeatures
from .mote import RoutingResult, TokenRouter


@dataclass
class DecoderOutput:
    """Outputs of one MoTE decoder pass.

    Attributes:
        logits: ``(B, 1, 4h, 4w)`` low-resolution mask logits of the chosen expert token.
        iou: ``(B, 1)`` predicted IoU of that mask.
        expert: ``(B,)`` long, the expert that the last router chose for that token.
        token: ``(B,)`` long, index of the chosen expert token.
        all_logits: ``(B, T, 4h, 4w)`` masks of every expert token.
        routings: one :class:`RoutingResult` per transformer block.
    """

    logits: torch.Tensor
    iou: torch.Tensor
    expert: torch.Tensor
    token: torch.Tensor
    all_logits: torch.Tensor
    routings: list[RoutingResult]


class MoTEDecoder(nn.Module):
    """The new decoder-side parameters of MoTE and the forward pass that uses them.

    Args:
        token_dim: decoder width ``D`` (256 for SAM, MedSAM and LiteMedSAM).
        early_channels: channels of the backbone's early feature map.
        num_blocks: two-way transformer blocks (2 for SAM's decoder), one router each.
        num_expert_tokens: ``T``, expert tokens appended to SAM's tokens.
        num_experts: ``E``, experts per router.
        bottleneck_dim: width of each expert's linear bottleneck.
    """

    def __init__(
        self,
        token_dim: int = 256,
        early_channels: int = 128,
        num_blocks: int = 2,
        num_expert_tokens: int = 4,
        num_experts: int = 4,
        bottleneck_dim: int = 64,
    ) -> None:
        super().__init__()
        self.num_expert_tokens = num_expert_tokens
        self.expert_tokens = nn.Embedding(num_expert_tokens, token_dim)
        self.routers = nn.ModuleList(TokenRouter(token_dim, num_experts, bottleneck_dim) for _ in range(num_blocks))
        self.features = HighQualityFeatures(token_dim, early_channels)
        self.hypernetworks = nn.ModuleList(
            MLP(token_dim, token_dim, token_dim // 8, 3) for _ in range(num_expert_tokens)
        )
        self.iou_head = MLP(token_dim, token_dim, 1, 3)

    def forward(
        self,
        decoder: nn.Module,
        embedding: torch.Tensor,
        image_pe: torch.Tensor,
        early: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
    ) -> DecoderOutput:
        """Decode one mask per batch item.

        Args:
            decoder: SAM's ``MaskDecoder`` (frozen, or a trainable copy).
            embedding: ``(B, D, h, w)`` or ``(1, D, h, w)`` image embedding (shared by all items).
            image_pe: ``(1, D, h, w)`` the prompt encoder's dense positional encoding.
            early: ``(B or 1, C_early, h', w')`` early encoder features.
            sparse: ``(B, N, D)`` sparse prompt tokens (points, box, or learned prompt tokens).
            dense: ``(B, D, h, w)`` dense prompt embedding (mask prompt or "no mask").
        """
        B = sparse.shape[0]
        if embedding.shape[0] != B:
            embedding = embedding.expand(B, -1, -1, -1)
            early = early.expand(B, -1, -1, -1)
        _, D, h, w = embedding.shape

        # Tokens: SAM's IoU and mask tokens, the expert tokens, the prompt tokens.
        sam_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        first_expert = sam_tokens.shape[0]
        last_expert = first_expert + self.num_expert_tokens
        tokens = torch.cat(
            [sam_tokens.expand(B, -1, -1), self.expert_tokens.weight.expand(B, -1, -1), sparse], dim=1
        )  # (B, 5 + T + N, D)

        # Image tokens with the dense prompt added, as SAM does.
        keys = (embedding + dense).flatten(2).transpose(1, 2)  # (B, h * w, D)
        key_pe = image_pe.flatten(2).transpose(1, 2).expand(B, -1, -1)

        # Two-way transformer blocks with a router in place of the MLP for expert tokens.
        transformer = decoder.transformer
        queries = tokens
        routings = []
        for block, router in zip(transformer.layers, self.routers):
            queries, keys, routing = self._run_block(block, router, queries, keys, tokens, key_pe, first_expert, last_expert)
            routings.append(routing)

        # Final token-to-image attention, as SAM does.
        attention = transformer.final_attn_token_to_image(q=queries + tokens, k=keys + key_pe, v=keys)
        queries = transformer.norm_final_attn(queries + attention)
        expert_tokens = queries[:, first_expert:last_expert]  # (B, T, D)

        # Upscale the image tokens and fuse the high-quality feature map.
        upscaled = decoder.output_upscaling(keys.transpose(1, 2).reshape(B, D, h, w))
        features = self.features(embedding, early, upscaled)  # (B, D / 8, 4h, 4w)

        # One mask per expert token from its hypernetwork.
        hyper = torch.stack(
            [network(expert_tokens[:, t]) for t, network in enumerate(self.hypernetworks)], dim=1
        )  # (B, T, D / 8)
        _, C, H, W = features.shape
        all_logits = (hyper @ features.reshape(B, C, H * W)).reshape(B, self.num_expert_tokens, H, W)

        # Output the most confident expert token's mask, scored by the expert IoU head.
        last = routings[-1]
        token = last.score.argmax(dim=1)  # (B,)
        batch = torch.arange(B, device=token.device)
        logits = all_logits[batch, token].unsqueeze(1)
        iou = self.iou_head(expert_tokens[batch, token])
        return DecoderOutput(logits, iou, last.expert[batch, token], token, all_logits, routings)

    @staticmethod
    def _run_block(
        block: nn.Module,
        router: TokenRouter,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        first_expert: int,
        last_expert: int,
    ) -> tuple[torch.Tensor, torch.Tensor, RoutingResult]:
        # Self-attention among tokens.
        if block.skip_first_layer_pe:
            queries = block.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + block.self_attn(q=q, k=q, v=queries)
        queries = block.norm1(queries)

        # Tokens attend to the image.
        attention = block.cross_attn_token_to_image(q=queries + query_pe, k=keys + key_pe, v=keys)
        queries = block.norm2(queries + attention)

        # SAM and prompt tokens: the block's MLP. Expert tokens: the routed experts.
        routing = router(queries[:, first_expert:last_expert])
        mlp_out = torch.cat(
            [
                block.mlp(queries[:, :first_expert]),
                routing.output,
                block.mlp(queries[:, last_expert:]),
            ],
            dim=1,
        )
        queries = block.norm3(queries + mlp_out)

        # The image attends to the tokens.
        q = queries + query_pe
        attention = block.cross_attn_image_to_token(q=keys + key_pe, k=q, v=queries)
        keys = block.norm4(keys + attention)
        return queries, keys, routing
