"""The ``export`` and ``push`` subcommands of the ``segmote`` command line.

``segmote export LABELS --source DICOM_DIR --output OUT.dcm [--labels JSON]``
writes a label map as a DICOM-SEG that references the source series.
``segmote push FILE... (--dicomweb URL | --dimse HOST PORT --called-aet AET)``
sends DICOM files to a PACS. Both raise :class:`InputError` for invalid input
(the CLI prints it as one line and exits with status 2); ``push`` returns 1 when
any file failed.

This module imports no torch.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Sequence

from ..errors import InputError

logger = logging.getLogger(__name__)

ALGORITHM_TYPE_CHOICES = ("automatic", "semiautomatic", "manual")


def add_export_parser(subparsers: argparse._SubParsersAction, parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """Register ``export``: label map file + source DICOM series -> DICOM-SEG."""
    parser = subparsers.add_parser(
        "export",
        parents=list(parents),
        help="write a label map as a DICOM-SEG referencing its source DICOM series",
        description="Write a label map (NIfTI, NRRD, MHA) computed on a DICOM series as a DICOM-SEG file.",
    )
    parser.add_argument("labels", type=Path, metavar="LABELS", help="label map on the series grid (any axis order or flip)")
    parser.add_argument("--source", type=Path, required=True, metavar="DICOM_DIR", help="folder of the source DICOM series")
    parser.add_argument("--output", type=Path, required=True, metavar="OUT.dcm", help="DICOM-SEG file to write")
    parser.add_argument(
        "--labels", dest="label_table", type=Path, metavar="JSON",
        help='label table {"1": "liver", ...} (default: LABELS.labels.json beside the label map)',
    )
    _add_if_missing(parser, "--series", metavar="UID|NUMBER", help="SeriesInstanceUID or SeriesNumber, required when DICOM_DIR contains several series")
    parser.add_argument("--strict", action="store_true", help="fail on a corrupt DICOM file instead of skipping it")
    parser.add_argument(
        "--algorithm-type", choices=ALGORITHM_TYPE_CHOICES, default="semiautomatic",
        help="segment algorithm type recorded in the SEG: automatic (auto-segmentation), semiautomatic "
        "(prompted or edited; the default) or manual",
    )
    parser.add_argument("--fractional", action="store_true", help="write a FRACTIONAL SEG (default: BINARY)")
    parser.add_argument(
        "--compress", choices=("deflate", "jpeg2000"),
        help="lossless compressed transfer syntax: deflate (read by 3D Slicer/dcmqi) or jpeg2000 (not read by dcmqi)",
    )
    parser.add_argument("--series-description", default="SegMoTE segmentation", help="SeriesDescription of the SEG")
    parser.add_argument("--series-number", type=int, help="SeriesNumber of the SEG (default: the source's plus 1000)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT.dcm if it exists")
    parser.set_defaults(func=run_export)
    return parser


def add_push_parser(subparsers: argparse._SubParsersAction, parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """Register ``push``: send DICOM files to a PACS by STOW-RS or C-STORE."""
    from .push import DEFAULT_TIMEOUT_SECONDS

    parser = subparsers.add_parser(
        "push",
        parents=list(parents),
        help="send DICOM files to a PACS (DICOMweb STOW-RS or DIMSE C-STORE)",
        description="Send DICOM files (or folders of them) to a PACS and report the status of each file. "
        "Credentials are read from files only.",
    )
    parser.add_argument("files", type=Path, nargs="+", metavar="FILE", help="DICOM files or folders (searched recursively)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--dicomweb", metavar="URL", help="DICOMweb service root, for example https://pacs/dicom-web")
    target.add_argument("--dimse", nargs=2, metavar=("HOST", "PORT"), help="C-STORE SCP host and port")
    parser.add_argument("--called-aet", help="AE title of the C-STORE SCP (required with --dimse)")
    parser.add_argument("--calling-aet", default="SEGMOTE", help="our AE title (default: SEGMOTE)")
    parser.add_argument("--token-file", type=Path, metavar="F", help="file whose first line is a bearer token (DICOMweb)")
    parser.add_argument("--user", metavar="U", help="user name for HTTP basic authentication (DICOMweb)")
    parser.add_argument("--password-file", type=Path, metavar="F", help="file whose first line is the password for --user")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, metavar="SECONDS",
        help=f"limit for connecting and for each response, in seconds (default: {DEFAULT_TIMEOUT_SECONDS:g})",
    )
    parser.set_defaults(func=run_push)
    return parser


def run_export(args: argparse.Namespace) -> int:
    """Write ``args.labels`` as a DICOM-SEG on the series in ``args.source``; return the exit code."""
    import SimpleITK as sitk

    from .label_grid import labels_on_series_grid
    from .seg_writer import write_seg_for_volume
    from .series import read_series

    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise InputError(f"output {output} exists; pass --overwrite to replace it, or choose another --output")
    if not Path(args.labels).is_file():
        raise InputError(f"label map not found: {args.labels}")
    table = read_label_table(Path(args.label_table) if args.label_table else Path(str(args.labels) + ".labels.json"), args.label_table is None)

    series = read_series(Path(args.source), series=getattr(args, "series", None), strict=args.strict)
    try:
        label_image = sitk.ReadImage(str(args.labels))
    except RuntimeError:
        raise InputError(f"cannot read the label map {args.labels}: use NIfTI, NRRD or MHA") from None
    labels = labels_on_series_grid(label_image, series.image, str(args.labels))

    write_seg_for_volume(
        labels, table, series.files, output, args.algorithm_type.upper(),
        fractional=args.fractional, compress=args.compress,
        series_description=args.series_description, series_number=args.series_number,
    )
    print(f"Wrote {output}")
    return 0


def read_label_table(path: Path, default_location: bool) -> dict[int, str]:
    """Read a label table ``{"1": "liver", ...}`` as ``{1: "liver", ...}``.

    Raises:
        InputError: the file is missing or is not a table of integer values to names.
    """
    if not path.is_file():
        hint = "pass --labels JSON" if default_location else "check the --labels path"
        raise InputError(f"label table not found: {path}; {hint} (a JSON object of label value -> structure name)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        table = {int(value): str(name) for value, name in raw.items()}
    except (json.JSONDecodeError, AttributeError, ValueError, TypeError):
        raise InputError(f'invalid label table {path}: expected a JSON object like {{"1": "liver", "2": "spleen"}}') from None
    if any(value <= 0 for value in table):
        raise InputError(f"invalid label table {path}: label values must be positive integers (0 is background)")
    return table


def run_push(args: argparse.Namespace) -> int:
    """Send ``args.files`` by STOW-RS or C-STORE, print one status line per file; return 0 or 1 (some failed)."""
    from .push import collect_files, push_dicomweb, push_dimse, read_credentials

    if args.timeout <= 0:
        raise InputError(f"invalid --timeout {args.timeout}: expected a positive number of seconds")
    files = collect_files(args.files)
    if args.dicomweb:
        credentials = read_credentials(args.token_file, args.user, args.password_file)
        results = push_dicomweb(files, args.dicomweb, credentials, args.timeout)
    else:
        if not args.called_aet:
            raise InputError("--dimse needs --called-aet, the AE title of the receiving PACS")
        if args.token_file or args.user or args.password_file:
            raise InputError("--token-file, --user and --password-file apply to --dicomweb only; DIMSE uses AE titles")
        host, port_text = args.dimse
        try:
            port = int(port_text)
        except ValueError:
            raise InputError(f"invalid port {port_text!r} for --dimse: expected a number 1-65535") from None
        results = push_dimse(files, host, port, args.called_aet, args.calling_aet, args.timeout)

    for result in results:
        print(f"{'OK    ' if result.ok else 'FAILED'} {result.path} {result.sop_instance_uid or '-'}: {result.status}")
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)} of {len(results)} files sent" + (f", {len(failed)} failed" if failed else ""))
    return 1 if failed else 0


def _add_if_missing(parser: argparse.ArgumentParser, option: str, **kwargs: object) -> None:
    """Add an option unless a parent parser (the CLI's common options) already defines it."""
    if option not in parser._option_string_actions:
        parser.add_argument(option, **kwargs)
