"""Time DICOM series reading and DICOM-SEG writing on the real 20-slice CT and on a 300-slice series built from it.

The 300-slice series repeats the 20 real slices 15 times (new SOP Instance UIDs,
positions continued 2 mm apart along the slice normal), and its label map
repeats the real labels the same way: real pixels and structures, synthetic
extent. Results are printed as a markdown table.

Usage: python benchmarks/bench_dicom_seg.py [--data ../shared/data] [--repeats 15] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import generate_uid

from segmote.dicom.seg_writer import write_seg_for_volume
from segmote.dicom.series import read_series


def build_repeated_series(source: Path, target: Path, repeats: int) -> None:
    """Write ``repeats`` copies of the source slices as one series, stacked along the slice normal."""
    datasets = [pydicom.dcmread(path) for path in sorted(source.iterdir())]
    positions = [float(np.dot(d.ImagePositionPatient, np.cross(d.ImageOrientationPatient[:3], d.ImageOrientationPatient[3:]))) for d in datasets]
    extent = (max(positions) - min(positions)) + 2.0  # one step beyond the last slice
    normal = np.cross(np.array(datasets[0].ImageOrientationPatient[:3], float), np.array(datasets[0].ImageOrientationPatient[3:], float))
    for repeat in range(repeats):
        for index, dataset in enumerate(datasets):
            copy = pydicom.dcmread(sorted(source.iterdir())[index])
            copy.SOPInstanceUID = generate_uid()
            copy.file_meta.MediaStorageSOPInstanceUID = copy.SOPInstanceUID
            copy.ImagePositionPatient = [float(v) for v in np.array(dataset.ImagePositionPatient, float) + normal * extent * repeat]
            copy.InstanceNumber = repeat * len(datasets) + index + 1
            copy.save_as(target / f"slice_{repeat:02d}_{index:02d}.dcm", enforce_file_format=True)


def best_seconds(function: Callable[[], object], runs: int) -> float:
    """Return the fastest of ``runs`` wall-clock timings of ``function`` (seconds)."""
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--repeats", type=int, default=15, help="copies of the 20 real slices in the large series")
    parser.add_argument("--runs", type=int, default=3, help="timings per case; the fastest is reported")
    args = parser.parse_args()

    source = args.data / "ct_abdomen_dicom" / "series"
    table = {int(k): v for k, v in json.loads((args.data / "labels_totalsegmentator.json").read_text())["total"].items()}
    label_image = sitk.ReadImage(str(args.data / "ct_abdomen_dicom" / "labels.nii.gz"))

    rows = []
    with tempfile.TemporaryDirectory() as work:
        work_path = Path(work)
        large = work_path / "large"
        large.mkdir()
        build_repeated_series(source, large, args.repeats)

        for name, folder in (("20 real slices", source), (f"{20 * args.repeats} slices (20 real, repeated)", large)):
            read_time = best_seconds(lambda: read_series(folder), args.runs)
            series = read_series(folder)
            real = sitk.Resample(label_image, read_series(source).image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label_image.GetPixelID())
            labels = np.tile(sitk.GetArrayFromImage(real), (len(series.files) // 20, 1, 1))
            for compression in (None, "deflate", "jpeg2000"):
                if compression == "jpeg2000" and len(series.files) > 20:
                    continue  # JPEG 2000 encodes each of the 7800 frames separately; estimated 20 s more per run than uncompressed
                output = work_path / f"seg_{len(series.files)}_{compression}.dcm"
                seconds = best_seconds(
                    lambda: write_seg_for_volume(labels, table, series.files, output, "AUTOMATIC", compress=compression), args.runs
                )
                frames = int(pydicom.dcmread(output, stop_before_pixels=True).NumberOfFrames)
                rows.append((name, compression or "none", read_time, seconds, frames, output.stat().st_size / 1e6))

    print(f"DICOM-SEG writing, best of {args.runs} runs, {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print()
    print("| series | compression | read series (s) | write SEG (s) | SEG frames | SEG size (MB) |")
    print("|---|---|---|---|---|---|")
    for name, compression, read_time, seconds, frames, size in rows:
        print(f"| {name} | {compression} | {read_time:.2f} | {seconds:.2f} | {frames} | {size:.2f} |")


if __name__ == "__main__":
    main()
