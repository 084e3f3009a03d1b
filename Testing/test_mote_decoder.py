"""MoTE in SAM's mask decoder: bare backbone untouched, deterministic routing, frozen backbone, balance loss."""

from __future__ import annotations

import pytest
import torch

from segmote.model.adapters import SegMoTEAdapters
from segmote.model.backbones import build_backbone
from segmote.model.mote import TokenRouter, balance_loss


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("lite-medsam")


def new_adapters(backbone, warm_start: bool = True) -> SegMoTEAdapters:
    torch.manual_seed(0)
    metadata = {"backbone": backbone.info.name, "backbone_sha256": backbone.info.checkpoint_sha256}
    adapters = SegMoTEAdapters(SegMoTEAdapters.default_config(backbone, ["liver"]), metadata)
    if warm_start:
        adapters.warm_start(backbone)
    return adapters


def inputs(backbone, batch: int = 2):
    generator = torch.Generator().manual_seed(3)
    embedding = torch.randn(batch, 256, 64, 64, generator=generator)
    early = torch.randn(batch, 128, 128, 128, generator=generator)
    boxes = torch.tensor([[30.0, 40.0, 150.0, 160.0], [60.0, 20.0, 100.0, 200.0]])[:batch]
    sparse, dense = backbone.prompt_encoder(None, boxes, None)
    return embedding, early, sparse, dense


def bare_decode(backbone, embedding, sparse, dense):
    outputs = [
        backbone.mask_decoder(embedding[i : i + 1], backbone.prompt_encoder.get_dense_pe(), sparse[i : i + 1], dense[i : i + 1], True)
        for i in range(embedding.shape[0])
    ]
    return torch.cat([o[0] for o in outputs]), torch.cat([o[1] for o in outputs])


@torch.no_grad()
def test_bare_backbone_bit_exact(backbone):
    embedding, early, sparse, dense = inputs(backbone)
    masks_before, iou_before = bare_decode(backbone, embedding, sparse, dense)
    state_before = {name: tensor.clone() for name, tensor in backbone.state_dict().items()}

    adapters = new_adapters(backbone).eval()
    adapted_logits, _, _ = adapters.decode_prompted(backbone, embedding, early, sparse, dense)
    masks_after, iou_after = bare_decode(backbone, embedding, sparse, dense)

    assert torch.equal(masks_before, masks_after)
    assert torch.equal(iou_before, iou_after)
    for name, tensor in backbone.state_dict().items():
        assert torch.equal(state_before[name], tensor), name
    # The expert tokens join the attention, so the adapted output differs even at initialisation.
    assert not torch.equal(adapted_logits, masks_before[:, :1])


@torch.no_grad()
def test_routing_deterministic_in_eval(backbone):
    adapters = new_adapters(backbone)
    with torch.no_grad():
        for router in adapters.mote.routers:
            router.gate.weight.normal_(0, 0.1)
    embedding, early, sparse, dense = inputs(backbone)

    adapters.eval()
    first = adapters.run(backbone, embedding, early, sparse, dense)
    second = adapters.run(backbone, embedding, early, sparse, dense)
    assert torch.equal(first.logits, second.logits)
    for a, b in zip(first.routings, second.routings):
        assert torch.equal(a.expert, b.expert)
        assert torch.equal(a.probabilities, b.probabilities)

    # Negative control: training mode adds gate noise, so the gate probabilities change between calls.
    adapters.train()
    noisy_first = adapters.run(backbone, embedding, early, sparse, dense)
    noisy_second = adapters.run(backbone, embedding, early, sparse, dense)
    assert not torch.equal(noisy_first.routings[0].probabilities, noisy_second.routings[0].probabilities)


def test_gradients_reach_only_new_parameters(backbone):
    # Without the warm start no layer starts at zero, so every new part gets a gradient at the first step.
    adapters = new_adapters(backbone, warm_start=False).train()
    embedding, early, sparse, dense = inputs(backbone)
    output = adapters.run(backbone, embedding, early, sparse, dense)
    loss = output.logits.sigmoid().mean() + output.iou.mean() + balance_loss(output.routings)
    loss.backward()

    assert all(not p.requires_grad and p.grad is None for p in backbone.parameters())
    named = dict(adapters.named_parameters())
    for name in ("mote.expert_tokens.weight", "mote.routers.0.gate.weight", "mote.routers.1.gate.weight",
                 "mote.features.project_early.weight", "mote.features.project_embedding.weight", "mote.iou_head.layers.0.weight"):
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name
    chosen = output.token.tolist()
    for token in set(chosen):
        grad = named[f"mote.hypernetworks.{token}.layers.2.weight"].grad
        assert grad is not None and grad.abs().sum() > 0


def test_straight_through_gate_value_and_gradient():
    torch.manual_seed(0)
    router = TokenRouter(token_dim=16, num_experts=4, bottleneck_dim=8).eval()
    with torch.no_grad():
        router.gate.weight.normal_(0, 0.5)
    tokens = torch.randn(3, 4, 16)
    result = router(tokens)

    # Forward value: exactly the chosen expert's output (hard gate = 1).
    flat = tokens.reshape(-1, 16)
    expected = torch.stack([router.experts[int(e)](flat[i]) for i, e in enumerate(result.expert.reshape(-1))])
    assert torch.allclose(result.output.reshape(-1, 16), expected, atol=1e-6)

    # Backward: the router's gate receives the softmax gradient through the hard gate.
    result.output.sum().backward()
    assert router.gate.weight.grad is not None
    assert router.gate.weight.grad.abs().sum() > 0


def test_balance_loss_zero_when_balanced_positive_when_skewed():
    from segmote.model.mote import RoutingResult

    E = 4
    balanced_expert = torch.arange(8).remainder(E).reshape(2, 4)
    balanced = RoutingResult(torch.zeros(2, 4, 8), balanced_expert, torch.full((2, 4), 0.5), torch.full((2, 4, E), 0.25))
    skewed = RoutingResult(torch.zeros(2, 4, 8), torch.zeros(2, 4, dtype=torch.long), torch.full((2, 4), 0.5), torch.full((2, 4, E), 0.25))
    assert float(balance_loss([balanced])) == pytest.approx(0.0, abs=1e-6)
    assert float(balance_loss([skewed])) > 1.0


@torch.no_grad()
def test_expert_iou_scores_mask_quality(shared_data, backbone):
    # The engine picks outputs and stops propagation by this score, so it must
    # rank a box on the object above a box on empty background.
    from segmote.engine.preprocess import prepare_slice
    from segmote.model.adapters import DEFAULT_ADAPTERS, load_adapters
    from segmote.train.masks import read_binary_mask
    from segmote.train.sources import read_image_2d, read_pairs_table

    root = shared_data / "pool" / "breast_us_busi"
    row = read_pairs_table(root)[1]
    image = read_image_2d(root / row["image"])
    mask = read_binary_mask(root / row["masks"])
    tensor, transform = prepare_slice(image, (1.0, 1.0), backbone.info.image_size)
    embedding, early = backbone.encode(tensor)
    adapters = load_adapters(DEFAULT_ADAPTERS, backbone)

    rows, cols = mask.nonzero()
    corners_rc = [[rows.min(), cols.min()], [rows.max(), cols.max()]]
    on_object = transform.rc_to_xy(corners_rc).reshape(1, 4)
    height, width = on_object[0, 3] - on_object[0, 1], on_object[0, 2] - on_object[0, 0]
    # The same box size in the image corner farthest from the lesion.
    far_x = 2.0 if on_object[0, 0] > 128 else 254.0 - width
    far_y = 2.0 if on_object[0, 1] > 128 else 254.0 - height
    background = [[far_x, far_y, far_x + width, far_y + height]]

    scores = []
    for box in (on_object, background):
        sparse, dense = backbone.prompt_encoder(None, torch.as_tensor(box, dtype=torch.float32), None)
        logits, iou, expert = adapters.decode_prompted(backbone, embedding, early, sparse, dense)
        assert iou.shape == (1, 1)
        assert expert.shape == (1,)
        assert 0 <= int(expert) < adapters.config["num_experts"]
        scores.append(float(iou))
    assert scores[0] > scores[1], scores
