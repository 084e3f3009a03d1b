"""The training loop: MoTE and PPT parameters on cached encoder outputs, with resumable checkpoints.

Each step trains one batch of a single kind. A prompted batch starts from a
jittered box or a click in the central half of the object, then adds 0 to
``max_corrective_rounds`` corrective clicks, each round fed the previous
logits. An automatic batch runs ``auto_rounds`` progressive rounds of the
structures' prompt tokens, and with probability 1/2 its first round is seeded
with a neighbouring slice's mask. Rounds are back-propagated one at a time,
because the fed-back logits are detached. After each epoch the loop validates
on held-out patients, logs one JSON line, saves a checkpoint and writes the
adapters (the best epoch's by validation Dice, or the last with ``keep_last``).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from ..errors import InputError
from ..model.adapters import DECODER_PREFIX, SegMoTEAdapters, save_adapters
from ..model.backbones import Backbone
from ..model.mote import balance_loss
from .cache import CachedSlice
from .data import Target, auto_targets, patient_id, prompted_targets, split_patients
from .decoding import decode_adapters, embed_prompts, seed_logits
from .evaluate import evaluate_auto, evaluate_prompted
from .losses import segmentation_loss
from .prompts import box_from_mask, central_point, corrective_click

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Settings of one training run.

    Attributes:
        output: adapters file written with the best validation box Dice.
        work_dir: folder for ``checkpoint.pt`` and ``train-log.jsonl``.
        epochs: number of epochs.
        epoch_size: targets drawn per epoch (None: every training target once).
        batch_size: targets per step.
        learning_rate: AdamW learning rate of the MoTE parameters.
        ppt_learning_rate_scale: factor on the learning rate of the prompt tokens,
            which start from random values while MoTE starts from SAM's mask token.
        decoder_learning_rate_scale: factor on the learning rate of the trained
            decoder copy (``unfreeze_decoder``), which starts from trained weights.
        cosine: decay every learning rate along a half cosine from its start
            value to zero over ``epochs`` (step by step), instead of keeping it constant.
        weight_decay: AdamW weight decay.
        box_probability: chance that a prompted batch starts from a box rather than a click.
        max_corrective_rounds: corrective clicks per prompted batch, drawn from 0 to this.
        auto_rounds: progressive rounds per automatic batch.
        auto_fraction: share of steps that train automatic targets.
        auto_trains_ppt_only: automatic batches update only the prompt tokens, so the
            noisy gradients of the untrained prompt tokens cannot pull the shared
            MoTE parameters away from what the prompted batches teach.
        validation_limit: most prompted and automatic validation targets scored per epoch.
        max_minutes: stop after the epoch that passes this wall time (None: no limit).
        warm_start: initialise the expert tokens from SAM's first mask token.
        unfreeze_decoder: also train a copy of SAM's mask decoder (in-domain setting).
        keep_last: write the last epoch's adapters to ``output`` instead of the
            best epoch's by validation Dice (which would pick the epoch on the
            same patients that the benchmark then reports).
        seed: random seed.
    """

    output: Path
    work_dir: Path
    epochs: int = 20
    epoch_size: Optional[int] = None
    batch_size: int = 4
    learning_rate: float = 1e-4
    ppt_learning_rate_scale: float = 1.0
    decoder_learning_rate_scale: float = 1.0
    cosine: bool = False
    weight_decay: float = 0.01
    box_probability: float = 0.5
    max_corrective_rounds: int = 2
    auto_rounds: int = 3
    auto_fraction: float = 0.4
    auto_trains_ppt_only: bool = False
    validation_limit: int = 64
    max_minutes: Optional[float] = None
    warm_start: bool = True
    unfreeze_decoder: bool = False
    keep_last: bool = False
    seed: int = 0
    metadata: dict = field(default_factory=dict)


@dataclass
class SplitTargets:
    """Targets of the training and validation patients."""

    train_prompted: list[Target]
    train_auto: list[Target]
    validation_prompted: list[Target]
    validation_auto: list[Target]


def make_targets(slices: list[CachedSlice], classes: list[str]) -> SplitTargets:
    """Split slices by patient and list the prompted and automatic targets of each side."""
    train_ids, validation_ids = split_patients(slices)
    train = [i for i, item in enumerate(slices) if patient_id(item) in train_ids]
    validation = [i for i, item in enumerate(slices) if patient_id(item) in validation_ids]
    return SplitTargets(
        prompted_targets(slices, train),
        auto_targets(slices, train, classes),
        prompted_targets(slices, validation),
        auto_targets(slices, validation, classes),
    )


def _spread(targets: list[Target], limit: int) -> list[Target]:
    if len(targets) <= limit:
        return targets
    return [targets[i] for i in np.linspace(0, len(targets) - 1, limit).round().astype(int)]


class Trainer:
    """Trains :class:`SegMoTEAdapters` on cached slices."""

    def __init__(self, backbone: Backbone, adapters: SegMoTEAdapters, slices: list[CachedSlice], config: TrainConfig) -> None:
        self.backbone = backbone
        self.adapters = adapters
        self.slices = slices
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        self.targets = make_targets(slices, adapters.structures)
        if not self.targets.train_prompted:
            raise InputError("no training targets left after curation and the patient split; add data")
        self.device = backbone.pixel_mean.device
        self.optimizer = torch.optim.AdamW(self._parameter_groups(), lr=config.learning_rate, weight_decay=config.weight_decay)
        self.epoch = 0
        self.best_dice = -1.0
        self.neighbours = self._neighbour_index()

    def _parameter_groups(self) -> list[dict]:
        """Build one AdamW group per part (MoTE, prompt tokens, decoder copy), each with its own learning rate."""
        scales = {"": 1.0, "ppt.": self.config.ppt_learning_rate_scale, DECODER_PREFIX: self.config.decoder_learning_rate_scale}
        groups: dict[str, list[torch.nn.Parameter]] = {prefix: [] for prefix in scales}
        for name, parameter in self.adapters.named_parameters():
            if parameter.requires_grad:
                prefix = next((p for p in scales if p and name.startswith(p)), "")
                groups[prefix].append(parameter)

        parameter_groups = []
        for prefix, params in groups.items():
            if params:
                learning_rate = self.config.learning_rate * scales[prefix]
                parameter_groups.append({"params": params, "lr": learning_rate, "start_lr": learning_rate})
        return parameter_groups

    def _set_learning_rate(self, progress: float) -> None:
        """Apply the half-cosine decay at ``progress`` in [0, 1] of the run (no-op unless ``cosine``)."""
        if not self.config.cosine:
            return
        factor = 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
        for group in self.optimizer.param_groups:
            group["lr"] = group["start_lr"] * factor

    # Slices of one volume named <prefix>k<index> are neighbours along k.
    def _neighbour_index(self) -> dict[int, list[int]]:
        by_key = {item.key: index for index, item in enumerate(self.slices)}
        neighbours: dict[int, list[int]] = {}
        for index, item in enumerate(self.slices):
            match = re.fullmatch(r"(.*k)(\d{3})", item.key)
            if match:
                prefix, k = match.group(1), int(match.group(2))
                found = [by_key[f"{prefix}{k + d:03d}"] for d in (-1, 1) if f"{prefix}{k + d:03d}" in by_key]
                if found:
                    neighbours[index] = found
        return neighbours

    # ---- checkpoints ---------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        """Resumable state of the run."""
        return self.config.work_dir / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        """Write adapters, optimiser and epoch atomically."""
        state = {
            "adapters": self.adapters.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": torch.tensor(self.epoch),
            "best_dice": torch.tensor(self.best_dice),
        }
        partial = self.checkpoint_path.with_suffix(".partial")
        torch.save(state, partial)
        partial.replace(self.checkpoint_path)

    def resume(self) -> bool:
        """Load the checkpoint of ``work_dir`` if there is one; return whether it was loaded."""
        if not self.checkpoint_path.is_file():
            return False
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        self.adapters.load_state_dict(state["adapters"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.best_dice = float(state["best_dice"])
        self.rng = np.random.default_rng(self.config.seed + self.epoch)
        logger.info("Resumed from %s after epoch %d", self.checkpoint_path, self.epoch)
        return True

    # ---- steps ---------------------------------------------------------

    def _inputs(self, batch: list[Target]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        embedding = torch.stack([self.slices[t.slice_index].embedding for t in batch]).float().to(self.device)
        early = torch.stack([self.slices[t.slice_index].early for t in batch]).float().to(self.device)
        target = torch.stack([t.mask for t in batch]).float().unsqueeze(1).to(self.device)
        return embedding, early, target

    def _backward(self, output, target: torch.Tensor) -> dict[str, float]:
        terms = segmentation_loss(output.logits, output.iou, target, balance_loss(output.routings))
        terms.total.backward()
        return {"loss": float(terms.total.detach()), "focal": terms.focal, "dice": terms.dice, "iou_mse": terms.iou_mse, "balance": terms.balance}

    def prompted_step(self, batch: list[Target]) -> list[dict[str, float]]:
        """Train one batch of prompted targets over several interactive rounds."""
        embedding, early, target = self._inputs(batch)
        B = len(batch)
        masks = [t.mask.numpy() for t in batch]
        use_box = self.rng.random() < self.config.box_probability
        boxes = [box_from_mask(m, self.rng) for m in masks] if use_box else None
        points = [[] if use_box else [central_point(m, self.rng)] for m in masks]
        labels = [[] if use_box else [1] for _ in masks]
        previous = None
        records = []
        for _ in range(1 + int(self.rng.integers(0, self.config.max_corrective_rounds + 1))):
            sparse, dense = embed_prompts(self.backbone, B, points if points[0] else None, labels if points[0] else None, boxes, previous)
            output = decode_adapters(self.adapters, self.backbone, embedding, early, sparse, dense)
            records.append(self._backward(output, target))
            previous = output.logits.detach()
            predictions = (previous[:, 0] > 0).cpu().numpy()
            for item in range(B):
                click = corrective_click(predictions[item], masks[item], self.rng) or (central_point(masks[item], self.rng), 1)
                points[item].append(click[0])
                labels[item].append(click[1])
        return records

    def auto_step(self, batch: list[Target]) -> list[dict[str, float]]:
        """Train one batch of automatic targets over progressive rounds."""
        embedding, early, target = self._inputs(batch)
        class_index = torch.tensor([t.class_index for t in batch], device=self.device)
        previous = self._seeds(batch) if self.rng.random() < 0.5 else None
        records = []
        for _ in range(self.config.auto_rounds):
            _, dense = embed_prompts(self.backbone, len(batch), mask_logits=previous)
            sparse = self.adapters.ppt(embedding, class_index)
            output = decode_adapters(self.adapters, self.backbone, embedding, early, sparse, dense)
            records.append(self._backward(output, target))
            previous = output.logits.detach()
        return records

    def _seeds(self, batch: list[Target]) -> torch.Tensor:
        """Seed masks like a neighbouring slice's result: the real neighbour, else the target moved and resized."""
        seeds = []
        for t in batch:
            neighbours = self.neighbours.get(t.slice_index)
            if neighbours:
                other = self.slices[int(self.rng.choice(neighbours))]
                seeds.append(other.masks[other.structures.index(t.structure)] if t.structure in other.structures else torch.zeros_like(t.mask))
                continue
            mask = t.mask.numpy()
            shift = self.rng.integers(-4, 5, size=2)
            mask = np.roll(mask, tuple(shift), axis=(0, 1))
            change = int(self.rng.integers(-2, 3))
            if change > 0:
                mask = ndimage.binary_dilation(mask, iterations=change)
            elif change < 0:
                mask = ndimage.binary_erosion(mask, iterations=-change)
            seeds.append(torch.from_numpy(mask))
        return seed_logits(torch.stack(seeds)).to(self.device)

    # ---- epochs --------------------------------------------------------

    def validate(self) -> dict[str, float]:
        """Score held-out patients: box Dice, one-click Dice and automatic Dice (means)."""
        self.adapters.eval()
        prompted = _spread(self.targets.validation_prompted, self.config.validation_limit)
        result: dict[str, float] = {"validation_targets": len(prompted)}
        if prompted:
            result["box_dice"] = float(evaluate_prompted(self.backbone, self.adapters, self.slices, prompted, "box").dice[:, 0].mean())
            result["click_dice"] = float(evaluate_prompted(self.backbone, self.adapters, self.slices, prompted, "click").dice[:, 0].mean())
        automatic = [t for t in self.targets.validation_auto if bool(t.mask.any())]
        automatic = _spread(automatic, self.config.validation_limit)
        if automatic and self.adapters.ppt is not None:
            result["auto_dice"] = float(evaluate_auto(self.backbone, self.adapters, self.slices, automatic, self.config.auto_rounds).mean())
            result["auto_targets"] = len(automatic)
        self.adapters.train()
        return result

    def run(self) -> dict[str, float]:
        """Train until ``epochs`` or ``max_minutes``; return the last validation result."""
        config = self.config
        config.work_dir.mkdir(parents=True, exist_ok=True)
        log_path = config.work_dir / "train-log.jsonl"
        started = time.monotonic()
        if self.epoch == 0:
            initial = self.validate()
            logger.info("Validation at initialisation: %s", initial)
            with log_path.open("a", encoding="utf-8") as log:
                log.write(json.dumps({"epoch": 0, **initial}) + "\n")
        result: dict[str, float] = {}
        while self.epoch < config.epochs:
            self.adapters.train()
            records = self._train_epoch()
            self.epoch += 1
            result = self.validate()
            summary = {key: float(np.mean([r[key] for r in records])) for key in records[0]} if records else {}
            line = {"epoch": self.epoch, "minutes": round((time.monotonic() - started) / 60, 2), **summary, **result}
            with log_path.open("a", encoding="utf-8") as log:
                log.write(json.dumps(line) + "\n")
            logger.info("Epoch %d: %s", self.epoch, line)
            score = result.get("box_dice", 0.0) + result.get("auto_dice", 0.0)
            if score > self.best_dice or config.keep_last:
                self.best_dice = max(score, self.best_dice)
                self.adapters.metadata["validation"] = {"epoch": self.epoch, **result}
                save_adapters(self.adapters, config.output)
            self.save_checkpoint()
            if config.max_minutes is not None and (time.monotonic() - started) / 60 > config.max_minutes:
                logger.info("Stopping after %.1f minutes (limit %s)", (time.monotonic() - started) / 60, config.max_minutes)
                break
        return result

    def _train_epoch(self) -> list[dict[str, float]]:
        config = self.config
        prompted = list(self.targets.train_prompted)
        automatic = list(self.targets.train_auto) if self.adapters.ppt is not None else []
        total = config.epoch_size or (len(prompted) + len(automatic))
        auto_count = int(round(total * config.auto_fraction)) if automatic else 0
        prompted_pick = [prompted[i] for i in self.rng.choice(len(prompted), total - auto_count, replace=total - auto_count > len(prompted))]
        auto_pick = []
        if auto_count:
            # Present structures are drawn three times as often as absent ones, so
            # that the many empty slices do not teach the tokens to predict nothing.
            weights = np.array([3.0 if bool(t.mask.any()) else 1.0 for t in automatic])
            picks = self.rng.choice(len(automatic), auto_count, replace=True, p=weights / weights.sum())
            auto_pick = [automatic[i] for i in picks]

        # Batches of one kind each, interleaved at random.
        size = config.batch_size
        batches = [("prompted", prompted_pick[i : i + size]) for i in range(0, len(prompted_pick), size)]
        batches += [("auto", auto_pick[i : i + size]) for i in range(0, len(auto_pick), size)]
        order = self.rng.permutation(len(batches))
        records = []
        for step, position in enumerate(tqdm(order, desc=f"epoch {self.epoch + 1}", unit="batch", leave=False)):
            kind, batch = batches[position]
            self._set_learning_rate((self.epoch + step / len(order)) / config.epochs)
            self.optimizer.zero_grad(set_to_none=True)
            step_records = self.prompted_step(batch) if kind == "prompted" else self.auto_step(batch)
            if kind == "auto" and config.auto_trains_ppt_only:
                for name, parameter in self.adapters.named_parameters():
                    if not name.startswith("ppt."):
                        parameter.grad = None
            self.optimizer.step()
            records.extend(step_records)
        return records


def describe_split(targets: SplitTargets) -> dict[str, int]:
    """Count targets per side for logs."""
    return {
        "train_prompted": len(targets.train_prompted),
        "train_auto": len(targets.train_auto),
        "validation_prompted": len(targets.validation_prompted),
        "validation_auto": len(targets.validation_auto),
    }
