"""Turning what the caller has (a file, a DICOM folder, an array with geometry) into an upload body."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..geometry import Grid
from ..wire import (
    FORMAT_ARRAY,
    FORMAT_DICOM_ZIP,
    UPLOAD_COMPRESSION_LEVEL,
    UploadDescription,
    compress,
    encode_array,
)

# File suffix -> upload format. Already-compressed formats are sent as they are.
FILE_SUFFIX_FORMATS = {".nii.gz": "nii.gz", ".nii": "nii", ".nrrd": "nrrd", ".mha": "mha"}
COMPRESSED_FORMATS = ("nii.gz",)


def _file_format(path: Path) -> Optional[str]:
    name = path.name.lower()
    for suffix, upload_format in FILE_SUFFIX_FORMATS.items():
        if name.endswith(suffix):
            return upload_format
    return None


def zip_folder(folder: Path) -> bytes:
    """Zip every file under ``folder`` (recursively) into memory, with paths relative to it."""
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    if not files:
        raise InputError(f"the folder {folder} contains no files; pass the folder of one DICOM series")
    buffer = io.BytesIO()
    # Level 1: DICOM pixel data is often already compressed (JPEG 2000), so
    # higher levels cost time for little gain.
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for path in files:
            archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def file_upload(
    path: Path, series: Optional[str], window: Optional[str], modality: Optional[str]
) -> Tuple[UploadDescription, bytes]:
    """Build the upload for a volume file, a DICOM folder, or a zip of a DICOM folder.

    Raises:
        InputError: the path is missing or of a format the server does not read.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        return UploadDescription(FORMAT_DICOM_ZIP, "none", series, window, modality), zip_folder(path)
    if path.name.lower().endswith(".zip"):
        return UploadDescription(FORMAT_DICOM_ZIP, "none", series, window, modality), path.read_bytes()
    upload_format = _file_format(path)
    if upload_format is None:
        raise InputError(
            f"cannot upload {path.name}: send a NIfTI (.nii, .nii.gz), NRRD (.nrrd) or MHA (.mha) file, "
            "a DICOM folder or a zip of one, or an (array, geometry) pair"
        )
    data = path.read_bytes()
    if upload_format in COMPRESSED_FORMATS:
        return UploadDescription(upload_format, "none", None, window, modality), data
    return UploadDescription(upload_format, "zlib", None, window, modality), compress(data, UPLOAD_COMPRESSION_LEVEL)


def _geometry_fields(geometry: Any) -> Tuple[Sequence[float], Sequence[float], Sequence[float], Optional[str]]:
    """Read origin (LPS mm), spacing (mm) and direction (9 numbers, row-major LPS) from a Grid or a mapping."""
    if isinstance(geometry, Grid):
        direction = [value for row in geometry.direction_lps for value in row]
        return geometry.origin_lps, geometry.spacing_ijk, direction, None
    if isinstance(geometry, Mapping):
        def pick(*names: str, default: Any = None) -> Any:
            for name in names:
                if name in geometry:
                    return geometry[name]
            return default

        origin = pick("origin_lps", "origin")
        spacing = pick("spacing_ijk", "spacing")
        direction = pick("direction_lps", "direction", default=(1, 0, 0, 0, 1, 0, 0, 0, 1))
        if origin is None or spacing is None:
            raise InputError(
                "the geometry needs 'origin_lps' (mm) and 'spacing_ijk' (mm); 'direction_lps' defaults to identity"
            )
        return origin, spacing, np.asarray(direction, dtype=float).reshape(-1).tolist(), pick("modality")
    raise InputError(
        f"invalid geometry of type {type(geometry).__name__}: pass a segmote.geometry.Grid or a dict with "
        "origin_lps, spacing_ijk and direction_lps"
    )


def array_upload(
    array: np.ndarray, geometry: Any, window: Optional[str], modality: Optional[str]
) -> Tuple[UploadDescription, bytes, Tuple[int, int, int]]:
    """Build the upload for a numpy array ``(K, J, I)`` (or ``(K, J, I, 3)`` RGB uint8) and its geometry.

    Returns the description, the body, and the shape ``(K, J, I)``.

    Raises:
        InputError: an array of the wrong shape or type, or incomplete geometry.
    """
    array = np.asarray(array)
    if array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[3] != 3):
        raise InputError(f"invalid array shape {array.shape}: expected (K, J, I) or (K, J, I, 3) in numpy order")
    origin, spacing, direction, geometry_modality = _geometry_fields(geometry)
    grid = Grid.create(array.shape[:3], origin, spacing, direction)  # checks the values before sending
    description, body = encode_array(array, UPLOAD_COMPRESSION_LEVEL)
    upload = UploadDescription(
        FORMAT_ARRAY,
        "zlib",
        None,
        window,
        modality or geometry_modality,
        description,
        grid.origin_lps,
        grid.spacing_ijk,
        tuple(value for row in grid.direction_lps for value in row),
    )
    return upload, body, grid.shape_kji
