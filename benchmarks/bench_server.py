"""Measure the remote click against the in-process click, on loopback.

Starts a real server (``python -m segmote.server``, bare LiteMedSAM, CPU
unless ``--device`` sets another) and runs the same prompts through the
HTTP client and through an in-process :class:`VolumeSession`:

- per-click round trip on a slice already encoded (p50, p95), next to the
  in-process ``segment`` time of the same prompts in the same run;
- the first click on a new slice (encode + decode), remote and in-process;
- bytes sent and received per click;
- the server's resident memory after opening 10 sessions and clicking once in each.

Usage::

    python benchmarks/bench_server.py [--data ../shared/data] [--clicks 40] [--sessions 10] [--markdown OUT.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from segmote.client import SegMoTEClient
from segmote.engine.session import Engine, VolumeSession
from segmote.engine.volume import read_volume
from segmote.protocol import parse_prompts

LIVER = 5  # TotalSegmentator "total" table
LISTENING_PREFIX = "SegMoTE server listening on "
REPOSITORY = Path(__file__).resolve().parents[1]


def percentile(values: list[float], fraction: float) -> float:
    return float(np.percentile(np.asarray(values), fraction * 100))


def liver_boxes(labels: np.ndarray, k: int, count: int) -> list[list[list[int]]]:
    """Boxes around the liver on slice k, grown by 0 to 4 voxels in turn, so every click changes the mask."""
    rows, cols = np.nonzero(labels[k] == LIVER)
    boxes = []
    for number in range(count):
        margin = number % 5
        boxes.append([[int(cols.min()) - margin, int(rows.min()) - margin, k], [int(cols.max()) + margin, int(rows.max()) + margin, k]])
    return boxes


def prompts_for(box: list[list[int]], name: str = "liver") -> dict:
    return {"coordinate_system": "IJK", "segments": [{"name": name, "view": "axial", "box": box}]}


def start_server(device: str, threads: int) -> tuple[subprocess.Popen, str]:
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads))
    process = subprocess.Popen(
        [sys.executable, "-m", "segmote.server", "--port", "0", "--adapters", "none", "--device", device, "--quiet"],
        stdout=subprocess.PIPE, text=True, env=environment,
    )
    line = process.stdout.readline()
    if not line.startswith(LISTENING_PREFIX):
        process.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return process, line[len(LISTENING_PREFIX):].strip()


def timed(function, *args) -> tuple[float, object]:
    start = time.perf_counter()
    value = function(*args)
    return (time.perf_counter() - start) * 1000.0, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPOSITORY.parent / "shared" / "data", help="the shared data folder")
    parser.add_argument("--clicks", type=int, default=40, help="clicks on the encoded slice (default 40)")
    parser.add_argument("--sessions", type=int, default=10, help="sessions for the memory figure (default 10)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="model device of both sides (default cpu)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads on both sides (default 1: on a loaded machine with few cores, "
                             "more threads made each click slower)")
    parser.add_argument("--markdown", type=Path, help="also write the results table to this file")
    args = parser.parse_args()

    ct_path = args.data / "ct_abdomen_small" / "ct.nii.gz"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(args.data / "ct_abdomen_small" / "labels.nii.gz")))
    k = int((labels == LIVER).sum(axis=(1, 2)).argmax())
    boxes = liver_boxes(labels, k, args.clicks)
    torch.set_num_threads(args.threads)
    process, url = start_server(args.device, args.threads)
    try:
        engine = Engine.load(adapters="none", device=args.device)
        local = VolumeSession(engine, read_volume(ct_path))
        client = SegMoTEClient(url)
        remote = client.open_session(ct_path)
        upload_bytes = remote.bytes_sent

        # First click on a new slice: encode + decode.
        first_remote_ms, _ = timed(remote.segment, prompts_for(boxes[0]))
        first_local_ms, _ = timed(local.segment, parse_prompts(prompts_for(boxes[0])).segments[0], "IJK")
        server_model_ms: list[float] = []

        # Clicks on the encoded slice, remote and in process in turn, so both see
        # the same machine load. With more than one torch thread, idle OpenMP
        # threads of one process spin for a while and slow the other one down.
        remote_ms, local_ms, sent, received, region_voxels = [], [], [], [], []
        for box in boxes:
            before_sent, before_received = remote.bytes_sent, remote.bytes_received
            elapsed, _ = timed(remote.segment, prompts_for(box))
            remote_ms.append(elapsed)
            sent.append(remote.bytes_sent - before_sent)
            received.append(remote.bytes_received - before_received)
            region_voxels.append(int(np.prod(remote.last_regions[0].array.shape)))
            server_model_ms.append(remote.last_regions[0].timings_ms["model"])
            local_ms.append(timed(local.segment, parse_prompts(prompts_for(box)).segments[0], "IJK")[0])
        assert remote.encoder_calls == 1, "a click on the encoded slice encoded it again"

        # Memory after N sessions with one click each.
        rss_start = client.health()["memory"]["process_rss_bytes"]
        sessions = [remote]
        for number in range(args.sessions - 1):
            session = client.open_session(ct_path)
            session.segment(prompts_for(boxes[0], name=f"liver_{number}"))
            sessions.append(session)
        health = client.health()
        rss_sessions = health["memory"]["process_rss_bytes"]
        for session in sessions:
            session.close()
        rss_closed = client.health()["memory"]["process_rss_bytes"]
    finally:
        process.terminate()
        process.wait(timeout=30)

    p50_remote, p95_remote = percentile(remote_ms, 0.5), percentile(remote_ms, 0.95)
    p50_local, p95_local = percentile(local_ms, 0.5), percentile(local_ms, 0.95)
    voxels = int(np.prod(labels.shape))
    rows = [
        ("machine", f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, device {args.device}"),
        ("volume", f"ct_abdomen_small {list(labels.shape)} (K, J, I), axial slice {k}, bare LiteMedSAM"),
        ("click on an encoded slice, remote round trip", f"p50 {p50_remote:.1f} ms, p95 {p95_remote:.1f} ms ({len(remote_ms)} clicks)"),
        ("same prompts in process (VolumeSession.segment)", f"p50 {p50_local:.1f} ms, p95 {p95_local:.1f} ms"),
        ("model time inside the server, per click", f"p50 {percentile(server_model_ms, 0.5):.1f} ms"),
        ("ratio remote / in-process", f"p50 {p50_remote / p50_local:.2f}, p95 {p95_remote / p95_local:.2f}"),
        ("first click on a new slice (encode + decode)", f"remote {first_remote_ms:.0f} ms, in-process {first_local_ms:.0f} ms"),
        ("bytes per click", f"sent {statistics.median(sent):.0f}, received median {statistics.median(received):.0f}, max {max(received)}"),
        ("changed region per click", f"median {statistics.median(region_voxels):.0f} voxels of {voxels} in the volume"),
        ("upload of the volume", f"{upload_bytes} bytes"),
        ("server RSS", f"{rss_start / 2**20:.0f} MiB with 1 session, {rss_sessions / 2**20:.0f} MiB with {args.sessions} "
                       f"sessions (one click each), {rss_closed / 2**20:.0f} MiB after closing them"),
    ]
    table = "| measure | result |\n|---|---|\n" + "\n".join(f"| {name} | {value} |" for name, value in rows) + "\n"
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
