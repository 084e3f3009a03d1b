"""The ``segmote`` command line: argument parsing and error reporting, no logic of its own.

Exit status: 0 success; 2 invalid input or usage (one line on stderr naming the
value and the fix); 1 any other failure. ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Optional, Sequence

from . import __version__
from .errors import SegMoTEError

logger = logging.getLogger("segmote")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID_INPUT = 2


class UsageError(SegMoTEError):
    """A command-line usage error, reported with exit status 2."""


class _ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`UsageError` instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message}; run '{self.prog} --help' for usage")


def add_common_options(parser: argparse.ArgumentParser, model: bool = True) -> None:
    """Add the options every command shares (and the model options when ``model``)."""
    parser.add_argument("--quiet", action="store_true", help="print only warnings and errors, no progress bars")
    parser.add_argument("--debug", action="store_true", help="show debug logs and full tracebacks on errors")
    if not model:
        return
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where the model runs; auto uses CUDA when present (default: auto)")
    parser.add_argument("--backbone", default="lite-medsam",
                        help="model backbone: lite-medsam (default, shipped), medsam-vit-b, sam-vit-b, sam-vit-l, sam-vit-h")
    parser.add_argument("--checkpoint", default=None,
                        help="weights file for backbones that are not shipped (or set SEGMOTE_CHECKPOINT)")
    parser.add_argument("--adapters", default="default",
                        help="SegMoTE adapters: 'default' (shipped, when present), 'none' (bare backbone) or a .safetensors path")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                        help="image encoder precision; bf16 is faster on CPUs with bfloat16 support (default: fp32)")
    parser.add_argument("--series", default=None,
                        help="SeriesInstanceUID or SeriesNumber when a DICOM folder contains several series")
    parser.add_argument("--strict", action="store_true",
                        help="fail on a corrupt file in a DICOM folder instead of skipping it with a warning")
    parser.add_argument("--window", default=None, choices=("soft_tissue", "lung", "bone", "brain"),
                        help="CT intensity window (default: soft_tissue); CT only")
    parser.add_argument("--modality", default=None,
                        help="override the input's modality, e.g. 'ct' for a NIfTI in Hounsfield units")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``segmote`` parser with every subcommand that this installation provides."""
    from .commands import add_engine_commands

    parser = _ArgumentParser(prog="segmote", description="SegMoTE: SAM-family segmentation of medical images.")
    parser.add_argument("--version", action="version", version=f"segmote {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ArgumentParser)
    subparsers.required = True
    add_engine_commands(subparsers)
    for module, function in (
        ("segmote.dicom.commands", "add_export_parser"),
        ("segmote.dicom.commands", "add_push_parser"),
        ("segmote.server.command", "add_serve_parser"),
        ("segmote.train.command", "add_train_parser"),
    ):
        _register_optional(subparsers, module, function)
    return parser


def _register_optional(subparsers: argparse._SubParsersAction, module_name: str, function_name: str) -> None:
    """Register a subcommand from a module whose own dependencies may be missing (such as fastapi)."""
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        logger.debug("Command from %s is unavailable: %s", module_name, error)
        return
    add_parser: Callable[[argparse._SubParsersAction], None] = getattr(module, function_name)
    add_parser(subparsers)


def _configure_logging(quiet: bool, debug: bool) -> None:
    level = logging.INFO
    if quiet:
        level = logging.WARNING
    if debug:
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s" if debug else "%(message)s")
    if not debug:
        # Third-party libraries log at INFO about things users need not see.
        for noisy in ("highdicom", "pydicom", "urllib3", "httpx", "PIL", "openjpeg"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in arguments
    try:
        parser = build_parser()
        args = parser.parse_args(arguments)
        _configure_logging(getattr(args, "quiet", False), getattr(args, "debug", False))
        return int(args.func(args) or EXIT_OK)
    except SegMoTEError as error:
        if debug:
            raise
        print(f"segmote: error: {error}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    except KeyboardInterrupt:
        print("segmote: interrupted; no output was written", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as error:  # the last line of defence: one line, no traceback
        if debug:
            raise
        print(f"segmote: error: {type(error).__name__}: {error}; rerun with --debug for details", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
