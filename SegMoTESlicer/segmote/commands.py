"""The engine's subcommands: ``segment``, ``auto``, ``evaluate`` and ``info``.

Each ``run_*`` function takes the parsed arguments and returns an exit status.
Invalid input raises :class:`segmote.errors.InputError`, which the CLI prints
as one line with exit status 2. Outputs are written atomically, so a failed
run leaves no file behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .errors import InputError

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("nii.gz", "nrrd", "seg.nrrd", "dcm")


def add_engine_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``segment``, ``auto``, ``evaluate`` and ``info``."""
    from .cli import add_common_options

    segment = subparsers.add_parser("segment", help="segment structures from point and box prompts")
    segment.add_argument("input", help="NIfTI/NRRD/MHA file, 2-D image (PNG/JPEG/TIFF/DICOM) or DICOM folder")
    segment.add_argument("--prompts", required=True, help="prompts JSON file (coordinate_system and segments)")
    segment.add_argument("--output", required=True,
                         help="label map to write: .nii.gz, .nii, .nrrd, .seg.nrrd, or .dcm (DICOM-SEG, DICOM input only)")
    segment.add_argument("--overlay", default=None, help="also write a PNG of the most labelled axial slice with the labels")
    add_common_options(segment)
    segment.set_defaults(func=run_segment)

    auto = subparsers.add_parser("auto", help="label named structures with no prompt (needs SegMoTE adapters)")
    auto.add_argument("inputs", nargs="+", metavar="INPUT", help="volumes, 2-D images or DICOM folders")
    auto.add_argument("--structures", required=True, help="comma-separated structure names, e.g. liver,spleen")
    target = auto.add_mutually_exclusive_group(required=True)
    target.add_argument("--output", default=None, help="label map to write (one input only)")
    target.add_argument("--output-dir", default=None, help="folder for one label map per input")
    auto.add_argument("--format", default="nii.gz", choices=OUTPUT_FORMATS, help="output format with --output-dir (default: nii.gz)")
    auto.add_argument("--overwrite", action="store_true", help="replace existing outputs in --output-dir (default: skip them)")
    add_common_options(auto)
    auto.set_defaults(func=run_auto)

    evaluate = subparsers.add_parser("evaluate", help="Dice and surface Dice (2 mm) of a label map against a reference")
    evaluate.add_argument("prediction", help="predicted label map")
    evaluate.add_argument("reference", help="reference label map")
    evaluate.add_argument("--pred-labels", default=None, help="label table of the prediction (default: <PRED>.labels.json, else equal values)")
    evaluate.add_argument("--ref-labels", default=None, help="label table of the reference (default: <REF>.labels.json, else equal values)")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_common_options(evaluate, model=False)
    evaluate.set_defaults(func=run_evaluate)

    info = subparsers.add_parser("info", help="show the version, devices, backbones and adapters")
    add_common_options(info, model=False)
    info.set_defaults(func=run_info)


# segment


def _load_engine(args: argparse.Namespace):
    from .engine.predictor import Engine

    return Engine.load(args.backbone, args.checkpoint, args.adapters, args.device, args.precision)


def _check_output(path: Path, dicom_input: bool) -> Path:
    """Validate an output path before any work is done."""
    from .engine.volume import LABEL_MAP_SUFFIXES

    name = path.name.lower()
    if name.endswith(".dcm"):
        if not dicom_input:
            raise InputError(
                f"cannot write DICOM-SEG {path.name}: the input is not a DICOM series, so there are no source "
                "instances for the SEG to reference; write .nii.gz, .nrrd or .seg.nrrd instead, "
                "or run on the DICOM folder"
            )
    elif not name.endswith(LABEL_MAP_SUFFIXES):
        raise InputError(
            f"unsupported output {path.name}: use .nii.gz, .nii, .nrrd, .seg.nrrd, or .dcm (DICOM input only)"
        )
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"output folder does not exist: {folder}; create it first")
    return path


def _write_output(
    labels: np.ndarray, label_table: dict[int, str], volume, path: Path, algorithm_type: str
) -> None:
    from .engine.volume import write_label_map

    if path.name.lower().endswith(".dcm"):
        from .dicom.seg_writer import write_seg_for_volume

        write_seg_for_volume(labels, label_table, volume.source_files, path, algorithm_type)
        table_path = Path(str(path) + ".labels.json")
        table = {str(value): name for value, name in sorted(label_table.items())}
        from .engine.volume import atomic_write

        atomic_write(table_path, lambda temporary: temporary.write_text(json.dumps(table, indent=2) + "\n"))
    else:
        write_label_map(labels, volume.grid, path, label_table)


def run_segment(args: argparse.Namespace) -> int:
    """Segment the prompted structures of one input and write the label map."""
    from .engine.session import VolumeSession
    from .engine.volume import read_volume
    from .protocol import load_prompts

    prompts = load_prompts(args.prompts)
    # Check the output before the (possibly long) read, assuming DICOM; recheck once the input is known.
    _check_output(Path(args.output), dicom_input=True)
    volume = read_volume(args.input, series=args.series, modality=args.modality, strict=args.strict)
    output = _check_output(Path(args.output), bool(volume.source_files))
    engine = _load_engine(args)
    session = VolumeSession(engine, volume, window=args.window, modality=args.modality)

    started = time.perf_counter()
    progress = _progress_bar(len(prompts.segments), "segments", args.quiet)
    labels = session.label_map(prompts, progress=progress.update_to if progress else None)
    if progress:
        progress.close()
    label_table = {number: segment.name for number, segment in enumerate(prompts.segments, start=1)}
    _write_output(labels, label_table, volume, output, "SEMIAUTOMATIC")
    if args.overlay:
        from .engine.overlay import write_overlay

        write_overlay(volume, session.scaling, labels, label_table, Path(args.overlay))
        logger.info("Wrote overlay %s", args.overlay)
    logger.info(
        "Segmented %d structures in %.1f s (%d slices encoded); wrote %s",
        len(label_table), time.perf_counter() - started, session.encoder_calls, output,
    )
    return 0


# auto


def _output_paths(args: argparse.Namespace) -> list[Optional[Path]]:
    """Return the output of each input; None marks an existing output to skip."""
    if args.output is not None:
        if len(args.inputs) != 1:
            raise InputError(f"--output takes one input, but {len(args.inputs)} were given; use --output-dir DIR")
        return [Path(args.output)]
    folder = Path(args.output_dir)
    if not folder.is_dir():
        raise InputError(f"output folder does not exist: {folder}; create it first")
    paths: list[Optional[Path]] = []
    for item in args.inputs:
        name = Path(item.rstrip("/")).name
        for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        path = folder / f"{name}.{args.format}"
        if path.exists() and not args.overwrite:
            logger.warning("Skipping %s: %s exists (use --overwrite to replace it)", item, path)
            paths.append(None)
        else:
            paths.append(path)
    return paths


def run_auto(args: argparse.Namespace) -> int:
    """Auto-segment named structures in each input; report failures per input."""
    from .engine.session import VolumeSession
    from .engine.volume import read_volume

    structures = [name.strip().lower() for name in args.structures.split(",") if name.strip()]
    if not structures:
        raise InputError("--structures is empty: give comma-separated names such as liver,spleen")
    outputs = _output_paths(args)
    engine = _load_engine(args)
    known = set(engine.structures)
    unknown = [name for name in structures if name not in known]
    if unknown:
        raise InputError(
            f"unknown structure(s) {', '.join(unknown)}: the loaded adapters segment "
            f"{', '.join(engine.structures) or 'none (load SegMoTE adapters with --adapters)'}"
        )

    failures = 0
    for item, output in zip(args.inputs, outputs):
        if output is None:
            continue
        try:
            volume = read_volume(item, series=args.series, modality=args.modality, strict=args.strict)
            _check_output(output, bool(volume.source_files))
            session = VolumeSession(engine, volume, window=args.window, modality=args.modality)
            progress = _progress_bar(100, Path(item).name, args.quiet)
            started = time.perf_counter()
            labels = session.auto(structures, progress=progress.update_fraction if progress else None)
            if progress:
                progress.close()
            table = {number: name for number, name in enumerate(structures, start=1)}
            _write_output(labels, table, volume, output, "AUTOMATIC")
            logger.info("%s: wrote %s in %.1f s", item, output, time.perf_counter() - started)
        except InputError as error:
            if len(args.inputs) == 1:
                raise
            failures += 1
            logger.error("%s: failed: %s", item, error)
    if failures:
        logger.error("%d of %d inputs failed", failures, len(args.inputs))
        return 1
    return 0


# evaluate


def _label_table_for(path: Path, explicit: Optional[str], image) -> dict[int, str]:
    import SimpleITK as sitk

    from .engine.metrics import read_label_table

    if explicit:
        return read_label_table(Path(explicit))
    beside = Path(str(path) + ".labels.json")
    if beside.is_file():
        return read_label_table(beside)
    values = np.unique(sitk.GetArrayViewFromImage(image))
    return {int(v): str(int(v)) for v in values if v != 0}


def _read_label_image(path: Path):
    import SimpleITK as sitk

    if not path.is_file():
        raise InputError(f"label map not found: {path}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise InputError(f"cannot read label map {path}: the file is corrupt or not an image") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path} is not a 3-D label map (dimension {image.GetDimension()})")
    return sitk.Cast(image, sitk.sitkUInt16)


def run_evaluate(args: argparse.Namespace) -> int:
    """Print Dice and surface Dice per structure matched by name."""
    from .engine.metrics import SURFACE_TOLERANCE_MM, compare_label_maps

    prediction_path, reference_path = Path(args.prediction), Path(args.reference)
    prediction = _read_label_image(prediction_path)
    reference = _read_label_image(reference_path)
    prediction_table = _label_table_for(prediction_path, args.pred_labels, prediction)
    reference_table = _label_table_for(reference_path, args.ref_labels, reference)
    scores = compare_label_maps(prediction, reference, prediction_table, reference_table)
    if not scores:
        raise InputError(
            "no structure name is in both label tables; pass --pred-labels and --ref-labels tables that share names"
        )
    valid = [score.dice for score in scores if score.dice is not None]
    if args.json:
        mean = sum(valid) / len(valid) if valid else None
        print(json.dumps({"structures": [score.__dict__ for score in scores], "mean_dice": mean}, indent=2))
        return 0
    print(f"{'structure':<24} {'Dice':>6} {f'NSD@{SURFACE_TOLERANCE_MM:g}mm':>10} {'pred vox':>9} {'ref vox':>9}")
    for score in scores:
        dice_text = "-" if score.dice is None else f"{score.dice:.3f}"
        nsd_text = "-" if score.surface_dice is None else f"{score.surface_dice:.3f}"
        print(f"{score.name:<24} {dice_text:>6} {nsd_text:>10} {score.predicted_voxels:>9} {score.reference_voxels:>9}")
    if valid:
        print(f"{'mean':<24} {sum(valid) / len(valid):>6.3f}")
    return 0


# info


def run_info(args: argparse.Namespace) -> int:
    """Print the version, torch and device status, backbones and adapters."""
    from . import __version__

    report: dict[str, Any] = {"segmote": __version__, "python": sys.version.split()[0]}
    try:
        import torch

        report["torch"] = torch.__version__
        report["cuda_available"] = bool(torch.cuda.is_available())
        if torch.cuda.is_available():
            report["cuda_device"] = torch.cuda.get_device_name(0)
        from .model.backbones import BACKBONES, CHECKPOINT_SOURCES

        report["backbones"] = {
            name: ("shipped" if name not in CHECKPOINT_SOURCES else f"user file {CHECKPOINT_SOURCES[name][0]}")
            for name in BACKBONES
        }
        try:
            from .model.adapters import DEFAULT_ADAPTERS

            report["default_adapters"] = str(DEFAULT_ADAPTERS) if Path(DEFAULT_ADAPTERS).is_file() else None
        except ImportError:
            report["default_adapters"] = None
    except ImportError:
        report["torch"] = None
        report["note"] = "torch is not installed: only the client, DICOM and evaluate commands work"
    for key, value in report.items():
        print(f"{key}: {value}")
    return 0


# progress


class _Progress:
    """A tqdm bar driven by callbacks (absolute counts or fractions)."""

    def __init__(self, total: int, description: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=description, unit="", file=sys.stderr, leave=False)

    def update_to(self, fraction: float, message: str = "") -> None:
        self.bar.n = round(fraction * self.bar.total)
        if message:
            self.bar.set_postfix_str(message, refresh=False)
        self.bar.refresh()

    update_fraction = update_to

    def close(self) -> None:
        self.bar.close()


def _progress_bar(total: int, description: str, quiet: bool) -> Optional[_Progress]:
    if quiet or (total <= 1 and description == "segments"):
        return None
    return _Progress(total, description)
