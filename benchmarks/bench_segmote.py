"""Accuracy of SegMoTE against the bare backbone on held-out patients, per modality.

Measures, on the validation patients of the training split (never trained on):

- box prompt: Dice of the bare backbone and of SegMoTE, and their paired difference;
- one interior click, then up to three corrective clicks: Dice after each click;
- the expert chosen by MoTE's last router, per modality (box prompts);
- automatic segmentation (learned prompt tokens, no click) per structure;
- automatic segmentation of the unseen CT series ``ct_abdomen_dicom`` through
  the engine's :class:`VolumeSession` (liver, spleen, stomach, aorta), scored
  in physical space against its reference labels.

Dice of the 2-D tasks is computed in the 256 x 256 low-resolution decoder
frame. Each mean comes with n and a 95% bootstrap confidence interval.

Usage::

    python benchmarks/bench_segmote.py --cache .cache/segmote-train/lite-medsam \\
        --data ../shared/data --json out.json --markdown out.md
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from segmote.engine.predictor import Engine
from segmote.engine.session import VolumeSession
from segmote.engine.volume import read_volume, to_sitk
from segmote.model.adapters import DEFAULT_ADAPTERS, load_adapters
from segmote.model.backbones import build_backbone
from segmote.train.cache import load_cache
from segmote.train.evaluate import evaluate_auto, evaluate_prompted
from segmote.train.loop import make_targets
from segmote.train.sources import read_label_table

logger = logging.getLogger("bench_segmote")

BOOTSTRAP_SAMPLES = 2000
CORRECTIVE_CLICKS = 3
ORGANS = ("liver", "spleen", "kidney", "kidney_left", "kidney_right", "pancreas", "stomach", "aorta",
          "inferior_vena_cava", "lung", "heart_ventricle_left", "heart_ventricle_right", "heart_myocardium", "brain",
          "thyroid_gland")
DICOM_STRUCTURES = ("liver", "spleen", "stomach", "aorta")


def mean_ci(values: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Return the mean, n and the 95% percentile-bootstrap interval of the mean."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"n": 0, "mean": float("nan"), "low": float("nan"), "high": float("nan")}
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(BOOTSTRAP_SAMPLES, values.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"n": int(values.size), "mean": float(values.mean()), "low": float(low), "high": float(high)}


def fmt(stats: dict[str, float]) -> str:
    if stats["n"] == 0:
        return "n/a"
    return f"{stats['mean']:.3f} [{stats['low']:.3f}, {stats['high']:.3f}]"


def prompted_benchmark(backbone, adapters, slices, targets) -> dict:
    groups: dict[str, list[int]] = defaultdict(list)
    for position, target in enumerate(targets):
        groups[slices[target.slice_index].modality].append(position)
        if target.structure in ORGANS:
            groups["organs (all modalities)"].append(position)
    groups["all"] = list(range(len(targets)))

    started = time.monotonic()
    box_base = evaluate_prompted(backbone, None, slices, targets, "box")
    box_mote = evaluate_prompted(backbone, adapters, slices, targets, "box")
    click_base = evaluate_prompted(backbone, None, slices, targets, "click", CORRECTIVE_CLICKS)
    click_mote = evaluate_prompted(backbone, adapters, slices, targets, "click", CORRECTIVE_CLICKS)
    logger.info("Prompted evaluation of %d targets took %.0f s", len(targets), time.monotonic() - started)

    results = {}
    for group, positions in sorted(groups.items()):
        index = np.array(positions)
        experts = np.bincount(box_mote.experts[index], minlength=adapters.config["num_experts"])
        results[group] = {
            "box_base": mean_ci(box_base.dice[index, 0]),
            "box_segmote": mean_ci(box_mote.dice[index, 0]),
            "box_difference": mean_ci(box_mote.dice[index, 0] - box_base.dice[index, 0]),
            "click_base": [mean_ci(click_base.dice[index, r]) for r in range(CORRECTIVE_CLICKS + 1)],
            "click_segmote": [mean_ci(click_mote.dice[index, r]) for r in range(CORRECTIVE_CLICKS + 1)],
            "expert_counts": experts.tolist(),
            "structures": sorted({targets[i].structure for i in positions}),
        }
    return results


def auto_benchmark(backbone, adapters, slices, targets) -> dict:
    present = [t for t in targets if bool(t.mask.any())]
    dice = evaluate_auto(backbone, adapters, slices, present) if present else np.zeros(0)
    per_structure: dict[str, list[float]] = defaultdict(list)
    for target, score in zip(present, dice):
        per_structure[target.structure].append(score)
    return {name: mean_ci(np.array(scores)) for name, scores in sorted(per_structure.items())}


def dicom_auto_benchmark(backbone, adapters, data: Path) -> dict:
    """Auto-segment the unseen CT series and score each structure in physical space."""
    volume = read_volume(data / "ct_abdomen_dicom" / "series")
    session = VolumeSession(Engine(backbone, adapters, next(backbone.parameters()).device), volume)
    started = time.monotonic()
    labels = session.auto(list(DICOM_STRUCTURES))
    seconds = time.monotonic() - started

    # The reference labels share the physical grid but store the rows flipped: resample by physical position.
    reference_image = sitk.ReadImage(str(data / "ct_abdomen_dicom" / "labels.nii.gz"))
    grid_image = to_sitk(np.zeros(volume.array.shape, dtype=np.uint8), volume.grid)
    reference = sitk.GetArrayFromImage(
        sitk.Resample(reference_image, grid_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, reference_image.GetPixelID())
    )
    table = {name: int(value) for value, name in read_label_table(data / "labels_totalsegmentator.json").items()}
    results = {"seconds": round(seconds, 1), "slices": int(volume.array.shape[0])}
    for number, name in enumerate(DICOM_STRUCTURES, start=1):
        prediction = labels == number
        truth = reference == table[name]
        total = prediction.sum() + truth.sum()
        results[name] = {
            "dice": float(2 * (prediction & truth).sum() / total) if total else 1.0,
            "predicted_voxels": int(prediction.sum()),
            "reference_voxels": int(truth.sum()),
        }
    return results


def markdown(report: dict) -> str:
    lines = [
        f"Held-out patients of the training split; Dice in the 256 x 256 decoder frame; mean [95% bootstrap CI]. "
        f"Adapters: `{report['adapters']}`.",
        "",
        "| modality | n | box: base | box: SegMoTE | SegMoTE - base | 1 click: base | 1 click: SegMoTE | +3 clicks: base | +3 clicks: SegMoTE | expert counts |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for group, row in report["prompted"].items():
        lines.append(
            f"| {group} | {row['box_base']['n']} | {fmt(row['box_base'])} | {fmt(row['box_segmote'])} | "
            f"{fmt(row['box_difference'])} | {fmt(row['click_base'][0])} | {fmt(row['click_segmote'][0])} | "
            f"{fmt(row['click_base'][-1])} | {fmt(row['click_segmote'][-1])} | {row['expert_counts']} |"
        )
    lines += ["", "Automatic segmentation (no click) on held-out 2-D slices:", "", "| structure | n | Dice |", "|---|---|---|"]
    for name, stats in report["auto"].items():
        lines.append(f"| {name} | {stats['n']} | {fmt(stats)} |")
    if "dicom_auto" in report:
        dicom = report["dicom_auto"]
        lines += [
            "",
            f"`segmote auto` path on the unseen CT series ct_abdomen_dicom ({dicom['slices']} slices, {dicom['seconds']} s), "
            "3-D Dice in physical space:",
            "",
            "| structure | Dice | predicted voxels | reference voxels |",
            "|---|---|---|---|",
        ]
        for name in DICOM_STRUCTURES:
            row = dicom[name]
            lines.append(f"| {name} | {row['dice']:.3f} | {row['predicted_voxels']} | {row['reference_voxels']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(".cache/segmote-train/lite-medsam"), help="encoder-output cache")
    parser.add_argument("--keys", type=Path, help="JSON list of cache keys to use (default: every cached slice)")
    parser.add_argument("--adapters", type=Path, default=DEFAULT_ADAPTERS, help="adapters file")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="project data folder (for the DICOM test)")
    parser.add_argument("--skip-dicom", action="store_true", help="skip the auto-segmentation of the DICOM series")
    parser.add_argument("--only-dicom", action="store_true", help="run only the auto-segmentation of the DICOM series")
    parser.add_argument("--json", type=Path, help="write the full report as JSON")
    parser.add_argument("--markdown", type=Path, help="write the tables as Markdown")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--limit", type=int, help="score at most this many targets of each kind (a quick check)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    backbone = build_backbone("lite-medsam")
    adapters = load_adapters(args.adapters, backbone)
    keys = json.loads(args.keys.read_text()) if args.keys else None
    slices = load_cache(args.cache, keys)
    split = make_targets(slices, adapters.structures)
    if args.limit:
        split.validation_prompted = split.validation_prompted[:: max(1, len(split.validation_prompted) // args.limit)][: args.limit]
        split.validation_auto = [t for t in split.validation_auto if bool(t.mask.any())][: args.limit]
    logger.info("%d slices; %d held-out prompted and %d auto targets", len(slices), len(split.validation_prompted), len(split.validation_auto))

    report = {
        "adapters": str(args.adapters),
        "validation_patients": sorted({f"{slices[t.slice_index].dataset}/{slices[t.slice_index].patient}" for t in split.validation_prompted}),
        "prompted": {},
        "auto": {},
    }
    if not args.only_dicom:
        report["prompted"] = prompted_benchmark(backbone, adapters, slices, split.validation_prompted)
        report["auto"] = auto_benchmark(backbone, adapters, slices, split.validation_auto)
    if not args.skip_dicom:
        report["dicom_auto"] = dicom_auto_benchmark(backbone, adapters, args.data)
    text = markdown(report)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
