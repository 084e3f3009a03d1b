"""Dice of each SAM output per prompt kind, on real CT with the bare backbone.

For a box and for one centre click on each structure's largest axial slice,
prints the Dice of the single-mask output, each of the three multimask
outputs, and the multimask output with the highest predicted IoU.

Usage: ``python benchmarks/bench_outputs.py [--data ../shared/data]``. Prints Markdown.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "Testing"))

from engine_cases import TOTAL_LABELS, labels_on_grid, largest_axial_slice, load_small_ct  # noqa: E402
from segmote.engine.metrics import dice  # noqa: E402
from segmote.engine.predictor import Engine  # noqa: E402
from segmote.engine.session import VolumeSession  # noqa: E402
from segmote.engine.volume import read_volume  # noqa: E402

CASES = {
    "ct_abdomen_small": ("liver", "spleen", "kidney_right", "kidney_left", "stomach", "aorta", "vertebrae_L1"),
    "ct_abdomen_dicom": ("liver", "spleen", "stomach", "aorta", "vertebrae_T12"),
}
OUTPUTS = ("single", "multi 0", "multi 1", "multi 2", "multi best IoU")


def output_dice(session: VolumeSession, mask: np.ndarray, kind: str) -> dict[str, float]:
    k = largest_axial_slice(mask)
    features = session.features("axial", k)
    rows, cols = np.nonzero(mask[k])
    backbone = session.engine.backbone
    geometry, transform = features.geometry, features.transform
    if kind == "box":
        corners = geometry.ijk_to_rc(np.array([[cols.min(), rows.min(), k], [cols.max(), rows.max(), k]], float))
        # The volume's axes may run against the slice's, so sort the corners on the slice.
        corners = np.stack([corners.min(axis=0), corners.max(axis=0)])
        box = torch.tensor(transform.rc_to_xy(corners).reshape(1, 4), dtype=torch.float32)
        sparse, dense = backbone.prompt_encoder(points=None, boxes=box, masks=None)
    else:
        centre = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
        rc = geometry.ijk_to_rc(np.array([[cols[centre], rows[centre], k]], float))
        points = (torch.tensor(transform.rc_to_xy(rc), dtype=torch.float32)[None], torch.tensor([[1]]))
        sparse, dense = backbone.prompt_encoder(points=points, boxes=None, masks=None)
    scores = {}
    for multimask in (False, True):
        logits, iou = backbone.mask_decoder(
            image_embeddings=features.embedding,
            image_pe=backbone.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        values = []
        for index in range(logits.shape[1]):
            plane = session.logits_to_mask(logits[:, index : index + 1], transform)
            full = np.zeros(mask.shape, bool)
            geometry.insert(full, plane)
            values.append(dice(full[k], mask[k]) or 0.0)
        if multimask:
            for index, value in enumerate(values):
                scores[f"multi {index}"] = value
            scores["multi best IoU"] = values[int(torch.argmax(iou[0]))]
        else:
            scores["single"] = values[0]
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPOSITORY.parent / "shared" / "data"))
    args = parser.parse_args()
    data = Path(args.data)
    engine = Engine.load(adapters="none", device="cpu")
    small_volume, small_labels = load_small_ct(data)
    dicom_volume = read_volume(data / "ct_abdomen_dicom" / "series")
    dicom_labels = labels_on_grid(data / "ct_abdomen_dicom" / "labels.nii.gz", dicom_volume)
    volumes = {"ct_abdomen_small": (small_volume, small_labels), "ct_abdomen_dicom": (dicom_volume, dicom_labels)}

    results: dict[str, list[dict[str, float]]] = {"box": [], "click": []}
    with torch.inference_mode():
        for name, structures in CASES.items():
            volume, labels = volumes[name]
            session = VolumeSession(engine, volume)
            for structure in structures:
                mask = labels == TOTAL_LABELS[structure]
                for kind in results:
                    results[kind].append(output_dice(session, mask, kind))
    count = len(results["box"])
    print(f"Mean Dice over {count} structures (ct_abdomen_small and ct_abdomen_dicom), bare LiteMedSAM, fp32.\n")
    print("| prompt | " + " | ".join(OUTPUTS) + " |")
    print("|---|" + "---|" * len(OUTPUTS))
    for kind, rows in results.items():
        means = [statistics.mean(row[output] for row in rows) for output in OUTPUTS]
        print(f"| {kind} | " + " | ".join(f"{value:.3f}" for value in means) + " |")
    print("\nCommand: python benchmarks/bench_outputs.py")


if __name__ == "__main__":
    main()
