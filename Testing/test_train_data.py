"""Training data: mask decoding (colour-coded, JPEG, GIF), curation, patient-level split, prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segmote.train.curation import quality_scores
from segmote.train.data import split_patients
from segmote.train.masks import parse_colour_legend, read_binary_mask, read_colour_mask
from segmote.train.prompts import box_from_mask, central_point, corrective_click
from segmote.train.sources import iter_pairs_folder, read_image_2d, read_pairs_table


def test_colour_legends_parsed():
    assert parse_colour_legend("pancreas=cyan, kidney=yellow, liver=magenta (annotator 1)") == {
        "pancreas": (0, 255, 255),
        "kidney": (255, 255, 0),
        "liver": (255, 0, 255),
    }
    assert parse_colour_legend("heart: label colours blue=1 RV, green=2 MYO, red=3 LV (ACDC convention)") == {
        "heart_ventricle_right": (0, 0, 255),
        "heart_myocardium": (0, 255, 0),
        "heart_ventricle_left": (255, 0, 0),
    }
    assert parse_colour_legend("thyroid gland") == {}


@pytest.mark.parametrize("folder", ["abdomen_ct_curvas", "cardiac_mri_acdc"])
def test_colour_masks_split_by_structure(shared_data: Path, folder: str):
    root = shared_data / "pool" / folder
    row = read_pairs_table(root)[0]
    legend = parse_colour_legend(row["anatomy"])
    masks = read_colour_mask(root / row["masks"], legend)
    raw = np.asarray(Image.open(root / row["masks"]).convert("RGB"))
    coloured = raw.max(axis=2) >= 128

    # Structures do not overlap, and together they cover every coloured pixel.
    stacked = np.stack(list(masks.values()))
    assert stacked.sum(axis=0).max() <= 1
    assert np.array_equal(stacked.any(axis=0), coloured)
    assert sum(int(m.any()) for m in masks.values()) >= 2
    for name, colour in legend.items():
        exact = np.all(raw == np.array(colour), axis=2)
        assert masks[name].sum() == pytest.approx(exact.sum(), abs=0.01 * max(1, exact.sum())), name


def test_jpeg_mask_thresholded_at_128(shared_data: Path):
    root = shared_data / "pool" / "thyroid_us_tg3k"
    row = read_pairs_table(root)[0]
    raw = np.asarray(Image.open(root / row["masks"]).convert("L"))
    mask = read_binary_mask(root / row["masks"])
    # JPEG noise leaves values just above 0: a nonzero test would swell the mask.
    assert ((raw > 0) & (raw < 128)).any()
    assert mask.sum() < (raw > 0).sum()
    assert np.array_equal(mask, raw >= 128)


def test_pairs_folder_samples(shared_data: Path):
    samples = list(iter_pairs_folder(shared_data / "pool" / "fundus_drive", max_rows=2))
    assert len(samples) == 2
    for sample in samples:
        assert sample.modality == "fundus"
        assert list(sample.masks) == ["retinal_vessels"]  # the field-of-view mask is not a target
        assert sample.image.dtype == np.float32
        assert sample.image.min() >= 0.0
        assert sample.image.max() <= 1.0
        assert 0.02 < sample.masks["retinal_vessels"].mean() < 0.3


def test_curation_keeps_good_drops_bad(shared_data: Path):
    root = shared_data / "pool" / "cxr_lungs"
    row = read_pairs_table(root)[0]
    image = read_image_2d(root / row["image"])
    mask = read_binary_mask(root / row["masks"])

    good = quality_scores(image, mask)
    assert good.kept, good.failures()

    empty = quality_scores(image, np.zeros_like(mask))
    assert not empty.kept
    assert "foreground_ratio" in empty.failures()
    assert "components" in empty.failures()

    constant = quality_scores(np.full_like(image, 0.5), mask)
    assert not constant.kept
    assert {"clarity", "contrast", "entropy"} <= set(constant.failures())

    speckled = np.zeros_like(mask)
    speckled[::16, ::16] = True
    assert "components" in quality_scores(image, speckled).failures()


class _Slice:
    def __init__(self, dataset: str, patient: str) -> None:
        self.dataset = dataset
        self.patient = patient


def test_split_is_patient_level():
    slices = [_Slice("curvas", f"p{i // 3}") for i in range(30)] + [_Slice("single", "only")]
    slices += [_Slice("ct_abdomen_small", "ct_abdomen_small")] * 5
    train, validation = split_patients(slices)
    assert not train & validation
    assert len([p for p in validation if p.startswith("curvas/")]) == 2  # ceil(0.2 * 10)
    assert "single/only" in train
    assert "ct_abdomen_small/ct_abdomen_small" in train
    # Stable across calls (hash order, not random).
    assert split_patients(slices) == (train, validation)


def test_prompts_on_real_mask(shared_data: Path):
    root = shared_data / "pool" / "breast_us_busi"
    row = read_pairs_table(root)[0]
    mask = read_binary_mask(root / row["masks"])
    rng = np.random.default_rng(0)

    x0, y0, x1, y1 = box_from_mask(mask)
    rows, cols = np.nonzero(mask)
    assert (x0, y0, x1, y1) == (cols.min(), rows.min(), cols.max(), rows.max())
    jittered = box_from_mask(mask, rng)
    assert np.abs(jittered - np.array([x0, y0, x1, y1])).max() <= 5

    for generator in (None, rng):
        x, y = central_point(mask, generator).astype(int)
        assert mask[y, x]

    # A prediction missing half the object gets a positive click in the missing half.
    prediction = mask.copy()
    prediction[:, : int(cols.mean())] = False
    (x, y), label = corrective_click(prediction, mask)
    assert label == 1
    assert mask[int(y), int(x)]
    assert not prediction[int(y), int(x)]
    assert corrective_click(mask, mask) is None
