"""A short training run on real ultrasound slices raises held-out one-click Dice above its value at initialisation."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from segmote.model.adapters import SegMoTEAdapters, load_adapters
from segmote.model.backbones import build_backbone
from segmote.train.cache import build_cache, load_cache
from segmote.train.loop import Trainer, TrainConfig
from segmote.train.sources import iter_pairs_folder

# Eight real thyroid ultrasound images (256 x 256, so no resizing): six
# training patients and two held out by the patient-level split.
ROWS = 8


def test_short_run_improves_click_dice(shared_data: Path, tmp_path: Path):
    torch.manual_seed(0)
    backbone = build_backbone("lite-medsam")
    samples = iter_pairs_folder(shared_data / "pool" / "thyroid_us_tg3k", max_rows=ROWS)
    counts, keys = build_cache(samples, backbone, tmp_path / "cache", [], tmp_path / "curation.jsonl")
    assert counts["thyroid_us_tg3k"]["kept"] >= 6
    slices = load_cache(tmp_path / "cache", keys)

    # LiteMedSAM was trained with boxes, so a single click starts far from the
    # target: the warm-started adapters begin with a low one-click Dice.
    metadata = {"backbone": backbone.info.name, "backbone_sha256": backbone.info.checkpoint_sha256}
    adapters = SegMoTEAdapters(SegMoTEAdapters.default_config(backbone, []), metadata)
    adapters.warm_start(backbone)
    config = TrainConfig(
        output=tmp_path / "adapters.safetensors",
        work_dir=tmp_path / "run",
        epochs=3,
        epoch_size=12,
        batch_size=4,
        learning_rate=1e-3,
        box_probability=0.0,
        max_corrective_rounds=0,
    )
    trainer = Trainer(backbone, adapters, slices, config)
    assert trainer.targets.validation_prompted, "the split must hold out at least one patient"
    train_patients = {slices[t.slice_index].patient for t in trainer.targets.train_prompted}
    held_out = {slices[t.slice_index].patient for t in trainer.targets.validation_prompted}
    assert not train_patients & held_out

    trainer.run()
    log = [json.loads(line) for line in (config.work_dir / "train-log.jsonl").read_text().splitlines()]
    initial = log[0]
    assert initial["epoch"] == 0
    assert len(log) == 1 + config.epochs
    best = max(line["click_dice"] for line in log[1:])
    assert best > initial["click_dice"] + 0.1, log

    # The best epoch was saved and loads back with its validation scores recorded.
    saved = load_adapters(config.output, backbone)
    assert saved.metadata["validation"]["epoch"] >= 1

    # Resuming continues from the checkpoint instead of starting over.
    resumed = Trainer(backbone, SegMoTEAdapters(SegMoTEAdapters.default_config(backbone, []), metadata), slices, config)
    assert resumed.resume()
    assert resumed.epoch == config.epochs
