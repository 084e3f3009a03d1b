"""Engine speed and memory on the real DICOM CT, each pipeline step next to the raw model forward.

Measures, in one run on one machine:

- encoder time per slice through ``VolumeSession.features`` (slice extraction,
  intensity scaling, resize, encode) vs the raw ``image_encoder`` forward on the
  same prepared tensors;
- decoder time per box prompt through ``VolumeSession.segment`` on a cached
  slice vs the raw prompt encoder + mask decoder forward;
- 3-D propagation of the liver (20 slices) vs the raw encoder + decoder forwards;
- the bf16 encoder (autocast) vs fp32: time and box Dice on five structures;
- peak resident memory for a 512 x 512 x 300 CT made by repeating the 20 real
  slices 15 times (a box prompt propagated 10 slices each way).

Usage: ``python benchmarks/bench_engine.py [--data ../shared/data] [--device cpu]``.
Prints a Markdown report.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "Testing"))

from engine_cases import TOTAL_LABELS, box_prompt_ijk, labels_on_grid, largest_axial_slice  # noqa: E402
from segmote.engine.metrics import dice  # noqa: E402
from segmote.engine.predictor import Engine  # noqa: E402
from segmote.engine.session import VolumeSession  # noqa: E402
from segmote.engine.volume import read_volume, volume_from_array  # noqa: E402
from segmote.protocol import parse_prompts  # noqa: E402

STRUCTURES = ("liver", "spleen", "stomach", "aorta", "vertebrae_T12")


def _median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def bench_encoder(session: VolumeSession, indices: list[int]) -> tuple[float, float]:
    """Median ms per slice: pipeline features() and raw encoder forward on the same tensors."""
    from segmote.engine.preprocess import prepare_slice

    pipeline, raw = [], []
    backbone = session.engine.backbone
    for index in indices:
        session.cache = type(session.cache)(session.cache.max_bytes)
        started = time.perf_counter()
        features = session.features("axial", index)
        pipeline.append(time.perf_counter() - started)
        image = session.slice_image(features.geometry)
        tensor, _ = prepare_slice(image, features.geometry.spacing_rc, backbone.info.image_size)
        with torch.inference_mode():
            normalized = backbone.normalize(tensor.to(session.engine.device))
            started = time.perf_counter()
            backbone.image_encoder(normalized)
            raw.append(time.perf_counter() - started)
    return _median_ms(pipeline), _median_ms(raw)


def bench_decoder(session: VolumeSession, labels: np.ndarray, repeats: int) -> tuple[float, float]:
    """Median ms per box prompt: session.segment on a cached slice and the raw decoder forward."""
    mask = labels == TOTAL_LABELS["liver"]
    k = largest_axial_slice(mask)
    prompts = parse_prompts(box_prompt_ijk(mask, k, "liver"))
    session.segment(prompts.segments[0], "IJK")  # encode once
    pipeline = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.segment(prompts.segments[0], "IJK")
        pipeline.append(time.perf_counter() - started)

    backbone = session.engine.backbone
    features = session.features("axial", k)
    box = torch.tensor([[40.0, 60.0, 180.0, 200.0]])
    raw = []
    with torch.inference_mode():
        for _ in range(repeats):
            started = time.perf_counter()
            sparse, dense = backbone.prompt_encoder(points=None, boxes=box, masks=None)
            backbone.mask_decoder(
                image_embeddings=features.embedding,
                image_pe=backbone.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            raw.append(time.perf_counter() - started)
    return _median_ms(pipeline), _median_ms(raw)


def bench_propagation(engine: Engine, volume, labels: np.ndarray, encoder_ms: float, decoder_ms: float) -> dict:
    session = VolumeSession(engine, volume)
    mask = labels == TOTAL_LABELS["liver"]
    k = largest_axial_slice(mask)
    prompts = parse_prompts(box_prompt_ijk(mask, k, "liver", propagate=True))
    started = time.perf_counter()
    result = session.segment(prompts.segments[0], "IJK")
    seconds = time.perf_counter() - started
    slices = len(result.slices)
    raw_seconds = (session.encoder_calls * encoder_ms + (slices + 1) * decoder_ms) / 1000
    return {"seconds": seconds, "slices": slices, "encoded": session.encoder_calls,
            "raw_seconds": raw_seconds, "dice": dice(result.mask, mask)}


def box_dice(engine: Engine, volume, labels: np.ndarray) -> tuple[dict[str, float], float]:
    """Box Dice per structure on its largest slice, and the median encoder ms in this precision."""
    session = VolumeSession(engine, volume)
    scores = {}
    times = []
    for name in STRUCTURES:
        mask = labels == TOTAL_LABELS[name]
        k = largest_axial_slice(mask)
        prompts = parse_prompts(box_prompt_ijk(mask, k, name))
        calls = session.encoder_calls
        started = time.perf_counter()
        result = session.segment(prompts.segments[0], "IJK")
        if session.encoder_calls > calls:
            times.append(time.perf_counter() - started)
        scores[name] = dice(result.mask[k], mask[k])
    return scores, _median_ms(times)


MEMORY_SCRIPT = """
import resource, sys, numpy as np
from segmote.engine.predictor import Engine
from segmote.engine.session import VolumeSession
from segmote.engine.volume import read_volume, volume_from_array
from segmote.protocol import parse_prompts
real = read_volume(sys.argv[1])
array = np.tile(real.array, (15, 1, 1))  # 20 real slices repeated 15 times
grid = real.grid
volume = volume_from_array(array, grid.origin_lps, grid.spacing_ijk, grid.direction, modality="CT")
del real, array
session = VolumeSession(Engine.load(adapters="none", device=sys.argv[2]), volume)
prompts = parse_prompts({"coordinate_system": "IJK", "segments": [{"name": "liver",
    "box": [[60, 150, 150], [240, 330, 150]], "propagate": True, "propagate_limit": 10}]})
result = session.segment(prompts.segments[0], "IJK")
print(volume.array.shape, len(result.slices), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def bench_memory(series: Path, device: str) -> tuple[str, int, float]:
    completed = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(series), device], capture_output=True, text=True, check=True
    )
    shape, slices, kib = completed.stdout.strip().rsplit(" ", 2)
    return shape, int(slices), int(kib) / 1024 / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPOSITORY.parent / "shared" / "data"), help="folder of the real test data")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--slices", type=int, default=5, help="slices timed for the encoder")
    parser.add_argument("--repeats", type=int, default=30, help="box prompts timed for the decoder")
    parser.add_argument("--skip-memory", action="store_true", help="skip the 300-slice memory run")
    parser.add_argument("--skip-bf16", action="store_true", help="skip the bf16 encoder comparison")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    folder = Path(args.data) / "ct_abdomen_dicom"
    volume = read_volume(folder / "series")
    labels = labels_on_grid(folder / "labels.nii.gz", volume)
    engine = Engine.load(adapters="none", device=args.device)
    session = VolumeSession(engine, volume)

    load_before = os.getloadavg()[0]
    indices = list(np.linspace(0, volume.grid.shape_kji[0] - 1, args.slices).round().astype(int))
    encoder_ms, raw_encoder_ms = bench_encoder(session, indices)
    decoder_ms, raw_decoder_ms = bench_decoder(session, labels, args.repeats)
    propagation = bench_propagation(engine, volume, labels, raw_encoder_ms, raw_decoder_ms)
    fp32_dice, fp32_ms = box_dice(engine, volume, labels)
    bf16_dice, bf16_ms = fp32_dice, float("nan")
    if not args.skip_bf16:
        bf16_engine = Engine(engine.backbone, None, engine.device, precision="bf16")
        bf16_dice, bf16_ms = box_dice(bf16_engine, volume, labels)
    load_after = os.getloadavg()[0]

    cpu = "unknown CPU"
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    if args.device == "cuda":
        cpu += f"; GPU {torch.cuda.get_device_name(0)}"
    print(f"Machine: {cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"device {args.device}; 1-minute load average {load_before:.1f} before and {load_after:.1f} after.\n")
    print("| step | pipeline (ms) | raw model forward (ms) | overhead ratio |")
    print("|---|---|---|---|")
    print(f"| encoder, per 512 x 512 slice (median of {len(indices)}) | {encoder_ms:.0f} | {raw_encoder_ms:.0f} | {encoder_ms / raw_encoder_ms:.2f} |")
    print(f"| decoder, per box prompt on a cached slice (median of {args.repeats}) | {decoder_ms:.1f} | {raw_decoder_ms:.1f} | {decoder_ms / raw_decoder_ms:.2f} |")
    print(f"| liver propagation, {propagation['slices']} slices ({propagation['encoded']} encoded) | "
          f"{propagation['seconds'] * 1000:.0f} | {propagation['raw_seconds'] * 1000:.0f} | "
          f"{propagation['seconds'] / propagation['raw_seconds']:.2f} |")
    print(f"\nLiver 3-D Dice after propagation: {propagation['dice']:.3f}\n")
    print("| encoder precision | median encode (ms) | " + " | ".join(STRUCTURES) + " |")
    print("|---|---|" + "---|" * len(STRUCTURES))
    rows = [("fp32", fp32_dice, fp32_ms)] + ([] if args.skip_bf16 else [("bf16 autocast", bf16_dice, bf16_ms)])
    for label, scores, ms in rows:
        print(f"| {label} | {ms:.0f} | " + " | ".join(f"{scores[name]:.3f}" for name in STRUCTURES) + " |")
    worst = max(abs(fp32_dice[name] - bf16_dice[name]) for name in STRUCTURES)
    print(f"\nbf16 vs fp32: speed ratio {fp32_ms / bf16_ms:.2f}, largest Dice difference {worst:.4f}")

    if not args.skip_memory:
        shape, slices, gib = bench_memory(folder / "series", args.device)
        print(f"\nPeak resident memory, CT {shape} (20 real slices repeated 15 times), "
              f"one box propagated over {slices} slices: {gib:.2f} GiB")
    print(f"\nCommand: python {' '.join(sys.argv)} (Python {platform.python_version()})")


if __name__ == "__main__":
    main()
