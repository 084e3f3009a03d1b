"""Independent readers of our DICOM-SEG files for the tests: dciodvfy, dcmqi and highdicom, each compared with the label map."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

# One dcmqi conversion of the 20-slice SEG takes about 3 s on one core; this leaves a wide margin.
TOOL_TIMEOUT_SECONDS = 120


def require_tool(name: str, package: str) -> str:
    """Return the path of a command-line tool, or fail the test naming the package that provides it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install {package}")
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """Run dicom3tools' dciodvfy on a file and return its error lines (warnings are not errors)."""
    tool = require_tool("dciodvfy", "the Debian package dicom3tools")
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS)
    return [line.strip() for line in (result.stdout + result.stderr).splitlines() if "Error" in line]


def dcmqi_segments(seg_path: Path, output_folder: Path) -> dict[str, sitk.Image]:
    """Convert a SEG with dcmqi's segimage2itkimage; return segment label -> binary image (one per segment)."""
    tool = require_tool("segimage2itkimage", "the PyPI package dcmqi")
    output_folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [tool, "--inputDICOM", str(seg_path), "--outputDirectory", str(output_folder), "--outputType", "nifti"],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_SECONDS,
    )
    assert result.returncode == 0, f"segimage2itkimage failed: {result.stdout[-2000:]} {result.stderr[-2000:]}"
    meta = json.loads((output_folder / "meta.json").read_text())
    images = {}
    for file_index, segments in enumerate(meta["segmentAttributes"], start=1):
        # dcmqi writes one file per group of non-overlapping segments; ours never overlap, so one segment each.
        assert len(segments) == 1, f"expected one segment per output file, found {len(segments)}"
        segment = segments[0]
        image = sitk.ReadImage(str(output_folder / f"{file_index}.nii.gz"))
        images[segment["SegmentLabel"]] = image == int(segment["labelID"])
    return images


def on_reference_grid(image: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """Place ``image`` onto ``reference``'s grid (nearest neighbour, 0 outside) after checking the grids share voxel centres.

    Returns a uint8 array ``(K, J, I)`` on ``reference``'s grid.
    """
    assert np.allclose(image.GetSpacing(), reference.GetSpacing()), "spacing differs from the source grid"
    assert np.allclose(image.GetDirection(), reference.GetDirection()), "direction differs from the source grid"
    origin_index = np.array(reference.TransformPhysicalPointToContinuousIndex(image.GetOrigin()))
    assert np.allclose(origin_index, np.round(origin_index), atol=1e-3), f"origin is off the source voxel centres: {origin_index}"
    resampled = sitk.Resample(sitk.Cast(image, sitk.sitkUInt8), reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(resampled)


def mismatched_segments(decoded: dict[str, np.ndarray], labels: np.ndarray, label_table: dict[int, str]) -> dict[str, int]:
    """Return structure name -> number of differing voxels, for every present label value (missing segment: -1)."""
    differences = {}
    for value in sorted(int(v) for v in np.unique(labels) if v != 0):
        name = label_table[value]
        if name not in decoded:
            differences[name] = -1
            continue
        count = int(np.count_nonzero((decoded[name] > 0) != (labels == value)))
        if count:
            differences[name] = count
    return differences


def highdicom_segments(seg_path: Path, source_files: list[Path]) -> dict[str, np.ndarray]:
    """Read a SEG with highdicom; return segment label -> mask ``(K, J, I)`` in the order of ``source_files``."""
    segmentation = hd.seg.segread(seg_path)
    source_uids = [str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in source_files]
    masks = segmentation.get_pixels_by_source_instance(
        source_sop_instance_uids=source_uids, combine_segments=False, skip_overlap_checks=True
    )  # (K, J, I, S)
    return {
        segmentation.get_segment_description(number).segment_label: masks[..., index]
        for index, number in enumerate(segmentation.segment_numbers)
    }
