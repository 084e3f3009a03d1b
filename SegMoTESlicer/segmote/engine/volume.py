"""Reading images into :class:`Volume` and writing label maps on the same grid.

Inputs read through SimpleITK: NIfTI, NRRD, MHA/MHD, a DICOM series folder,
and single 2-D images (PNG, JPEG, TIFF, single-frame DICOM). A 2-D image
becomes a volume with one slice (K = 1). Origin, spacing and direction are
kept, and every label map is written on exactly the input grid.

This module imports no torch.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..geometry import Grid

logger = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LABEL_MAP_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha")

# Voxel count above which a volume is rejected: 2048 x 2048 x 2048 voxels is
# 8 Gi voxels, beyond any CT we expect and beyond this machine's memory as float32.
MAX_VOXELS = 2048**3


@dataclass
class Volume:
    """An image on a patient-space grid.

    Attributes:
        array: voxel values in numpy order ``(K, J, I)``, or ``(K, J, I, 3)``
            for RGB images (uint8).
        grid: the voxel grid (origin, spacing, direction in LPS).
        modality: DICOM modality (``"CT"``, ``"MR"``, ...) when known.
        source_files: for DICOM input, the instance files in slice order (k).
        series_uid: for DICOM input, the SeriesInstanceUID.
        path: where the volume was read from, if anywhere.
    """

    array: np.ndarray
    grid: Grid
    modality: Optional[str] = None
    source_files: list[Path] = field(default_factory=list)
    series_uid: Optional[str] = None
    path: Optional[Path] = None

    @property
    def is_rgb(self) -> bool:
        """Whether the voxels are RGB triplets."""
        return self.array.ndim == 4

    @property
    def is_8bit(self) -> bool:
        """Whether the voxels are 8-bit, i.e. already windowed for display."""
        return self.array.dtype == np.uint8


def grid_of(image: sitk.Image) -> Grid:
    """Return the :class:`Grid` of a 3-D SimpleITK image."""
    size = image.GetSize()
    return Grid.create((size[2], size[1], size[0]), image.GetOrigin(), image.GetSpacing(), image.GetDirection())


def to_sitk(array: np.ndarray, grid: Grid) -> sitk.Image:
    """Wrap an array ``(K, J, I)`` or ``(K, J, I, C)`` as a SimpleITK image on ``grid``."""
    image = sitk.GetImageFromArray(array, isVector=array.ndim == 4)
    image.SetOrigin(grid.origin_lps)
    image.SetSpacing(grid.spacing_ijk)
    image.SetDirection(tuple(grid.direction.flatten()))
    return image


def _has_suffix(path: Path, suffixes: Sequence[str]) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in suffixes)


def _volume_from_image(image: sitk.Image, path: Path, modality: Optional[str] = None) -> Volume:
    """Check a SimpleITK image and turn it into a :class:`Volume` (2-D becomes one slice)."""
    dimension = image.GetDimension()
    components = image.GetNumberOfComponentsPerPixel()
    if dimension == 4 or (dimension == 3 and components not in (1, 3, 4)):
        # SimpleITK reads a 4-D NIfTI as 3-D with one component per time point.
        extra = f" with {components} values per voxel" if dimension == 3 else ""
        raise InputError(
            f"{path} is a 4-D image (size {image.GetSize()}{extra}); SegMoTE needs one 3-D volume or 2-D image: "
            "extract one time point or channel first"
        )
    if dimension == 2:
        image = sitk.JoinSeries(image)
    if dimension not in (2, 3):
        raise InputError(f"{path} has {dimension} dimensions; expected a 2-D image or a 3-D volume")
    if image.GetNumberOfPixels() > MAX_VOXELS:
        raise InputError(
            f"{path} has {image.GetNumberOfPixels()} voxels, more than the supported {MAX_VOXELS}; crop or downsample it first"
        )

    array = sitk.GetArrayFromImage(image)
    if components == 4:
        array = array[..., :3]  # drop alpha
    elif components == 1 and array.ndim == 4:
        array = array[..., 0]
    elif components not in (1, 3, 4):
        raise InputError(f"{path} has {components} channels per pixel; SegMoTE reads grey-scale or RGB images")
    if components in (3, 4) and array.dtype != np.uint8:
        raise InputError(f"{path} is a colour image of type {array.dtype}; SegMoTE reads 8-bit RGB colour images")
    # An RGB image with three equal channels is grey-scale in disguise (many 2-D CT PNGs are).
    if array.ndim == 4 and np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2]):
        array = np.ascontiguousarray(array[..., 0])

    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            raise InputError(
                f"{path} contains {int(bad.sum())} NaN or infinite voxels; replace them (for example with the "
                "minimum intensity) before segmenting"
            )
    if np.iscomplexobj(array):
        raise InputError(f"{path} has complex voxels; convert it to magnitude first")
    return Volume(array=array, grid=grid_of(image), modality=modality, path=path)


def read_volume(
    path: str | Path, series: Optional[str] = None, modality: Optional[str] = None, strict: bool = False
) -> Volume:
    """Read a volume file, a 2-D image or a DICOM folder.

    Args:
        path: a NIfTI/NRRD/MHA/MHD file, a PNG/JPEG/TIFF/BMP or single-frame DICOM image,
            or a folder of DICOM files.
        series: SeriesInstanceUID or SeriesNumber, required when a DICOM folder contains several series.
        modality: overrides the modality (``"CT"`` makes the intensities count as HU).
        strict: for DICOM folders, fail on a corrupt file instead of skipping it with a warning.

    Raises:
        InputError: missing, unreadable, corrupt or unsupported input; the message
            names the file and the fix.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"input not found: {path}; check the path (a file, or a folder of DICOM files)")
    if path.is_dir():
        from ..dicom.series import read_series

        dicom = read_series(path, series=series, strict=strict)
        volume = _volume_from_image(dicom.image, path, modality or dicom.modality)
        volume.source_files = list(dicom.files)
        volume.series_uid = dicom.series_uid
        return volume

    if path.suffix.lower() == ".dcm" or not (_has_suffix(path, VOLUME_SUFFIXES) or _has_suffix(path, IMAGE_2D_SUFFIXES)):
        modality = modality or _dicom_modality(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(
            f"cannot read {path}: the file is corrupt or not a supported image "
            f"(NIfTI, NRRD, MHA/MHD, PNG, JPEG, TIFF, DICOM); SimpleITK said: {_first_line(error)}"
        ) from None
    return _volume_from_image(image, path, modality)


def _dicom_modality(path: Path) -> Optional[str]:
    try:
        import pydicom

        return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality", "")) or None
    except Exception:  # not DICOM: SimpleITK reports the real problem next
        return None


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(error).__name__


def volume_from_array(
    array: np.ndarray,
    origin_lps: Sequence[float] = (0.0, 0.0, 0.0),
    spacing_ijk: Sequence[float] = (1.0, 1.0, 1.0),
    direction_lps: Sequence[float] | np.ndarray = (1, 0, 0, 0, 1, 0, 0, 0, 1),
    modality: Optional[str] = None,
) -> Volume:
    """Build a :class:`Volume` from a numpy array ``(K, J, I)`` and its geometry, with the same checks as files."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    if array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[3] != 3):
        raise InputError(f"invalid array shape {array.shape}: expected (K, J, I) or (K, J, I, 3)")
    grid = Grid.create(array.shape[:3], origin_lps, spacing_ijk, direction_lps)
    image = to_sitk(np.ascontiguousarray(array), grid)
    volume = _volume_from_image(image, Path("<array>"), modality)
    volume.path = None
    return volume


def label_dtype(max_label: int) -> np.dtype:
    """Return the smallest unsigned type for label values up to ``max_label``."""
    return np.dtype(np.uint8) if max_label < 256 else np.dtype(np.uint16)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write a file through a temporary file in the same folder, then rename it into place.

    ``write`` receives the temporary path (which keeps ``path``'s suffixes so that
    writers choose the format by extension). On any failure the temporary file is
    removed and ``path`` is untouched.

    Raises:
        InputError: the folder does not exist or is not writable.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"output folder does not exist: {folder}; create it first")
    if not os.access(folder, os.W_OK):
        raise InputError(f"output folder is not writable: {folder}; choose another --output")
    suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith((".nii.gz", ".seg.nrrd")) else path.suffix
    handle, temporary_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=folder)
    os.close(handle)
    temporary = Path(temporary_name)
    # mkstemp creates the file readable by its owner only; give it the usual mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_label_map(
    labels: np.ndarray,
    grid: Grid,
    path: str | Path,
    label_table: dict[int, str],
    colors: Optional[dict[int, tuple[int, int, int]]] = None,
) -> Path:
    """Write a label map ``(K, J, I)`` on ``grid`` and its table beside it as ``<path>.labels.json``.

    The format follows the extension: ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``,
    or ``.seg.nrrd`` (a Slicer segmentation with segment names and colours).
    Both files are written atomically.

    Raises:
        InputError: unsupported extension, wrong array shape or unwritable folder.
    """
    import json

    path = Path(path)
    if not _has_suffix(path, LABEL_MAP_SUFFIXES):
        raise InputError(
            f"unsupported output {path.name}: use one of {', '.join(LABEL_MAP_SUFFIXES)} (or .dcm for DICOM input)"
        )
    if tuple(labels.shape) != tuple(grid.shape_kji):
        raise InputError(f"label map shape {labels.shape} does not match the volume {grid.shape_kji}")
    max_label = max(label_table, default=0)
    labels = labels.astype(label_dtype(max_label), copy=False)
    image = to_sitk(labels, grid)

    if path.name.lower().endswith(".seg.nrrd"):
        from .seg_nrrd import add_segment_metadata

        add_segment_metadata(image, labels, label_table, colors)

    atomic_write(path, lambda temporary: sitk.WriteImage(image, str(temporary), useCompression=True))
    table_path = Path(str(path) + ".labels.json")
    table = {str(value): name for value, name in sorted(label_table.items())}
    atomic_write(table_path, lambda temporary: temporary.write_text(json.dumps(table, indent=2) + "\n"))
    logger.info("Wrote %s and its label table %s", path, table_path)
    return path
