"""MoTE: token-level mixture of experts for the expert tokens of SAM's mask decoder.

A :class:`TokenRouter` sits in each two-way transformer block, after the
token-to-image cross-attention. Each expert token is routed on its own to
one of ``E`` small experts (top-1): in training with noisy gating, at
inference deterministically. The kept expert's output is multiplied by a
straight-through hard gate. Its forward value is 1 and its gradient is that
of the expert's softmax probability. A top-1 softmax over the kept expert
alone would be the constant 1, so without this the router would not learn.

Shapes: ``B`` batch, ``T`` expert tokens, ``D`` token width (256 for SAM), ``E`` experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Offset of the noise scale in noisy top-1 gating: std = softplus(x W_n) + NOISE_FLOOR.
NOISE_FLOOR = 0.01


class TokenExpert(nn.Module):
    """One expert: a linear bottleneck ``D -> width`` and a small MLP back to ``D``."""

    def __init__(self, token_dim: int, bottleneck_dim: int = 64) -> None:
        super().__init__()
        self.down = nn.Linear(token_dim, bottleneck_dim)
        self.up = nn.Sequential(
            nn.Linear(bottleneck_dim, bottleneck_dim * 2),
            nn.GELU(),
            nn.Linear(bottleneck_dim * 2, token_dim),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Map tokens ``(N, D)`` to ``(N, D)``."""
        return self.up(self.down(tokens))


@dataclass
class RoutingResult:
    """Outputs of one router call on a batch of expert tokens.

    Attributes:
        output: ``(B, T, D)`` gated expert outputs, one per expert token.
        expert: ``(B, T)`` long, index of the chosen expert.
        score: ``(B, T)`` float, softmax probability of the chosen expert (its confidence).
        probabilities: ``(B, T, E)`` softmax over all experts (clean logits in eval, noisy in training).
    """

    output: torch.Tensor
    expert: torch.Tensor
    score: torch.Tensor
    probabilities: torch.Tensor


class TokenRouter(nn.Module):
    """Noisy top-1 router over ``num_experts`` :class:`TokenExpert` modules.

    Gate logits are ``x W_g``; in training ``(softplus(x W_n) + 0.01) * N(0, 1)`` is added.
    ``W_g`` and ``W_n`` start at zero, so all experts start equally likely.
    """

    def __init__(self, token_dim: int, num_experts: int = 4, bottleneck_dim: int = 64) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.gate = nn.Linear(token_dim, num_experts, bias=False)
        self.noise = nn.Linear(token_dim, num_experts, bias=False)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.noise.weight)
        self.experts = nn.ModuleList(TokenExpert(token_dim, bottleneck_dim) for _ in range(num_experts))

    def forward(self, tokens: torch.Tensor) -> RoutingResult:
        """Route expert tokens ``(B, T, D)``; see :class:`RoutingResult`."""
        B, T, D = tokens.shape
        flat = tokens.reshape(B * T, D)

        # Gate logits, noisy only in training.
        logits = self.gate(flat)
        if self.training:
            scale = F.softplus(self.noise(flat)) + NOISE_FLOOR
            logits = logits + torch.randn_like(logits) * scale
        probabilities = logits.softmax(dim=-1)  # (B * T, E)
        score, expert = probabilities.max(dim=-1)

        # Straight-through hard gate: value 1, gradient of the kept probability.
        hard_gate = 1.0 + score - score.detach()

        # Run each expert on the tokens routed to it.
        output = torch.zeros_like(flat)
        for index, module in enumerate(self.experts):
            selected = expert == index
            if selected.any():
                output[selected] = module(flat[selected]) * hard_gate[selected, None]

        return RoutingResult(
            output.reshape(B, T, D),
            expert.reshape(B, T),
            score.reshape(B, T),
            probabilities.reshape(B, T, self.num_experts),
        )


def coefficient_of_variation_squared(values: torch.Tensor) -> torch.Tensor:
    """Return ``var / mean^2`` of a 1-D tensor (0 for a zero tensor)."""
    mean = values.mean()
    return values.var(unbiased=False) / (mean * mean + 1e-10)


def balance_loss(routings: list[RoutingResult]) -> torch.Tensor:
    """Load-balancing loss ``sum over routers of CV^2(importance) + CV^2(load)`` (unweighted).

    The importance of an expert is the sum of the gate values (kept softmax
    probabilities) routed to it. Its load is the number of tokens routed to it.
    The caller weights the sum, by 0.01 in the default recipe.
    """
    total = routings[0].score.new_zeros(())
    for routing in routings:
        E = routing.probabilities.shape[-1]
        one_hot = F.one_hot(routing.expert.reshape(-1), E).to(routing.score.dtype)  # (B * T, E)
        importance = (one_hot * routing.score.reshape(-1, 1)).sum(dim=0)
        load = one_hot.sum(dim=0)
        total = total + coefficient_of_variation_squared(importance) + coefficient_of_variation_squared(load)
    return total
