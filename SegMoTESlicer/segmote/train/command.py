"""``segmote train``: curate data, cache encoder outputs, train SegMoTE adapters.

The lead's CLI registers :func:`add_train_parser`; ``python -m segmote.train.command``
runs the same command on its own.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .. import __version__
from ..errors import InputError
from .catalog import AUTO_STRUCTURES, iter_default_samples
from .sources import LICENCES, SliceSample, iter_instance_folder, iter_labelled_volume, iter_pairs_folder, read_label_table

if TYPE_CHECKING:
    from ..model.adapters import SegMoTEAdapters
    from ..model.backbones import Backbone

logger = logging.getLogger(__name__)

# Words in a licence that restrict the trained weights to research use.
RESEARCH_ONLY_MARKERS = ("NC", "research")


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``train`` sub-command; its ``func`` is :func:`run_train`."""
    parser = subparsers.add_parser(
        "train",
        help="train SegMoTE adapters (MoTE expert tokens and learned prompt tokens) on labelled images",
        description=(
            "Curate image/mask pairs and labelled volumes, cache the frozen encoder's outputs, "
            "and train the SegMoTE adapters on the cache. Training resumes from --work-dir with --resume."
        ),
    )
    inputs = parser.add_argument_group("training data")
    inputs.add_argument("--data", type=Path, help="project data folder (pool/, ct_abdomen_small/, ct_slices_2d/): the default plan")
    inputs.add_argument("--pairs", type=Path, action="append", default=[], metavar="DIR",
                        help="folder with a pairs.tsv of 2-D image/mask pairs or 3-D image/label rows (repeatable)")
    inputs.add_argument("--volume", nargs=3, action="append", default=[], metavar=("IMAGE", "LABELS", "TABLE"),
                        help="a volume, its label map on the same grid and a label table JSON (repeatable)")
    inputs.add_argument("--instances", type=Path, action="append", default=[], metavar="DIR",
                        help="folder with images/NAME.png and masks/NAME_STRUCTURE_K.png (repeatable)")
    inputs.add_argument("--structures", default=",".join(AUTO_STRUCTURES),
                        help="comma-separated structures that get learned prompt tokens for auto-segmentation")

    model = parser.add_argument_group("model")
    model.add_argument("--backbone", default="lite-medsam", help="backbone name (default: lite-medsam)")
    model.add_argument("--checkpoint", type=Path, help="backbone checkpoint file, for backbones not shipped")
    model.add_argument("--device", default="auto", help="auto, cpu or cuda")
    model.add_argument("--unfreeze-decoder", action="store_true",
                       help="also train a copy of SAM's mask decoder (in-domain setting; larger adapters)")
    model.add_argument("--init", type=Path, metavar="ADAPTERS",
                       help="start from these adapters (same backbone and structures) instead of a fresh warm start; "
                            "a decoder copy in the file is trained on")
    model.add_argument("--ppt-only", action="store_true",
                       help="train only the learned prompt tokens; MoTE and any decoder copy stay as initialised")
    model.add_argument("--no-warm-start", action="store_true",
                       help="start the expert tokens at random instead of from SAM's first mask token")

    run = parser.add_argument_group("run")
    run.add_argument("--output", type=Path, required=True, help="adapters file to write (.safetensors)")
    run.add_argument("--work-dir", type=Path, default=Path(".cache/segmote-train/run"),
                     help="folder for the checkpoint, the training log and the curation report")
    run.add_argument("--cache", type=Path, help="encoder-output cache folder (default: .cache/segmote-train/BACKBONE)")
    run.add_argument("--epochs", type=int, default=20, help="number of epochs (default: 20)")
    run.add_argument("--epoch-size", type=int, help="targets per epoch (default: every training target once)")
    run.add_argument("--batch-size", type=int, default=4, help="targets per step (default: 4)")
    run.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default: 1e-4)")
    run.add_argument("--ppt-lr-scale", type=float, default=1.0,
                     help="factor on the learning rate of the prompt tokens, which start from random values (default: 1)")
    run.add_argument("--decoder-lr-scale", type=float, default=1.0,
                     help="factor on the learning rate of the decoder copy trained with --unfreeze-decoder (default: 1)")
    run.add_argument("--cosine", action="store_true",
                     help="decay the learning rates to zero along a half cosine over --epochs")
    run.add_argument("--box-probability", type=float, default=0.5,
                     help="chance that a prompted batch starts from a box rather than a click (default: 0.5)")
    run.add_argument("--max-corrective-rounds", type=int, default=2, help="most corrective clicks per prompted batch")
    run.add_argument("--auto-rounds", type=int, default=3, help="progressive rounds per auto batch (default: 3)")
    run.add_argument("--auto-fraction", type=float, default=0.4, help="share of steps on automatic targets (default: 0.4)")
    run.add_argument("--auto-trains-ppt-only", action="store_true",
                     help="let automatic batches update only the prompt tokens, not the shared MoTE parameters")
    run.add_argument("--max-minutes", type=float, help="stop after the epoch that passes this many minutes")
    run.add_argument("--validation-limit", type=int, default=64, help="most validation targets scored per epoch")
    run.add_argument("--keep-last", action="store_true",
                     help="write the last epoch's adapters instead of the best epoch's by validation Dice")
    run.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work-dir")
    run.add_argument("--seed", type=int, default=0, help="random seed")
    run.add_argument("--threads", type=int, help="torch CPU threads")
    parser.set_defaults(func=run_train)
    return parser


def _samples(args: argparse.Namespace) -> Iterator[SliceSample]:
    sources = []
    if args.data is not None:
        sources.append(iter_default_samples(args.data))
    for folder in args.pairs:
        if not (folder / "pairs.tsv").is_file():
            raise InputError(f"--pairs {folder}: no pairs.tsv in that folder")
        sources.append(iter_pairs_folder(folder))
    for image, labels, table in args.volume:
        label_table = read_label_table(Path(table))
        sources.append(iter_labelled_volume(Path(image), Path(labels), label_table, Path(image).name.split(".")[0]))
    for folder in args.instances:
        sources.append(iter_instance_folder(folder, folder.name))
    if not sources:
        raise InputError("no training data given: pass --data, --pairs, --volume or --instances")
    return itertools.chain(*sources)


def _provenance(slices: list, structures: list[str], backbone, command: str) -> dict:
    datasets = sorted({item.dataset for item in slices})
    licences = {name: LICENCES.get(name, "unknown: check the source's terms") for name in datasets}
    research_only = any(marker in licence for licence in licences.values() for marker in RESEARCH_ONLY_MARKERS)
    return {
        "name": f"segmote-{backbone.info.name}",
        "version": __version__,
        "backbone": backbone.info.name,
        "backbone_sha256": backbone.info.checkpoint_sha256,
        "structures": structures,
        "datasets": licences,
        "terms": "research use only (trained on non-commercial or research-only data)" if research_only else "see data licences",
        "training_command": command,
        "slices": len(slices),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _initial_adapters(path: Path, backbone: Backbone, structures: list[str]) -> SegMoTEAdapters:
    """Load adapters to continue training from, trainable and in training mode.

    Raises:
        InputError: the file's structures differ from ``structures``.
        ModelError: the file is missing, corrupt or made for another backbone.
    """
    from ..model.adapters import load_adapters

    adapters = load_adapters(path, backbone)
    if adapters.structures != structures:
        raise InputError(
            f"--init {path} has structures {','.join(adapters.structures)}; pass the same list with --structures"
        )
    adapters.requires_grad_(True)
    adapters.train()
    return adapters


def run_train(args: argparse.Namespace) -> int:
    """Run ``segmote train``; return the exit status (0 on success)."""
    import torch

    from ..engine.predictor import resolve_device
    from ..model.adapters import SegMoTEAdapters
    from ..model.backbones import build_backbone
    from .cache import build_cache, load_cache
    from .loop import Trainer, TrainConfig, describe_split

    if args.threads:
        torch.set_num_threads(args.threads)
    structures = [name.strip() for name in args.structures.split(",") if name.strip()]
    if args.output.suffix != ".safetensors":
        raise InputError(f"--output {args.output}: adapters are written as .safetensors; use that extension")
    if args.ppt_only and not structures:
        raise InputError("--ppt-only trains the prompt tokens of named structures; pass --structures")
    device = resolve_device(args.device)
    backbone = build_backbone(args.backbone, args.checkpoint, device)
    # Check --init before the long encoder pass, so a wrong file fails at once.
    initial = _initial_adapters(args.init, backbone, structures) if args.init is not None else None
    cache_dir = args.cache or Path(".cache/segmote-train") / backbone.info.name
    args.work_dir.mkdir(parents=True, exist_ok=True)

    # Curate and cache the encoder outputs.
    started = time.monotonic()
    counts, keys = build_cache(_samples(args), backbone, cache_dir, structures, args.work_dir / "curation.jsonl")
    (args.work_dir / "curation-counts.json").write_text(json.dumps(counts, indent=1))
    for dataset, count in sorted(counts.items()):
        logger.info("Curation %s: kept %d, dropped %d (slice, structure) pairs", dataset, count["kept"], count["dropped"])
    slices = load_cache(cache_dir, keys)
    logger.info("Cached %d slices in %.0f s", len(slices), time.monotonic() - started)

    # Build the adapters with their provenance.
    command = "segmote train " + " ".join(shlex.quote(part) for part in sys.argv[2:]) if len(sys.argv) > 2 else "segmote train"
    provenance = _provenance(slices, structures, backbone, command)
    if initial is not None:
        adapters = initial
        adapters.metadata = {**provenance, "initialised_from": initial.metadata.get("training_command", str(args.init))}
    else:
        adapters = SegMoTEAdapters(SegMoTEAdapters.default_config(backbone, structures), provenance)
        if not args.no_warm_start:
            adapters.warm_start(backbone)
    if args.unfreeze_decoder and adapters.mask_decoder is None:
        adapters.unfreeze_decoder(backbone)
    if args.ppt_only:
        for name, parameter in adapters.named_parameters():
            parameter.requires_grad_(name.startswith("ppt."))
    adapters.to(device)

    config = TrainConfig(
        output=args.output,
        work_dir=args.work_dir,
        epochs=args.epochs,
        epoch_size=args.epoch_size,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        ppt_learning_rate_scale=args.ppt_lr_scale,
        decoder_learning_rate_scale=args.decoder_lr_scale,
        cosine=args.cosine,
        box_probability=args.box_probability,
        max_corrective_rounds=args.max_corrective_rounds,
        auto_rounds=args.auto_rounds,
        auto_fraction=args.auto_fraction,
        auto_trains_ppt_only=args.auto_trains_ppt_only,
        validation_limit=args.validation_limit,
        max_minutes=args.max_minutes,
        warm_start=not args.no_warm_start,
        unfreeze_decoder=args.unfreeze_decoder,
        keep_last=args.keep_last,
        seed=args.seed,
    )
    trainer = Trainer(backbone, adapters, slices, config)
    logger.info("Targets: %s", describe_split(trainer.targets))
    if args.resume:
        trainer.resume()
    result = trainer.run()
    logger.info("Finished after epoch %d: %s; adapters in %s", trainer.epoch, result, args.output)
    return 0


def main() -> int:
    """Run ``train`` without the full CLI: ``python -m segmote.train.command train ...``."""
    parser = argparse.ArgumentParser(prog="segmote")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_train_parser(subparsers)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except InputError as error:
        print(f"segmote train: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
