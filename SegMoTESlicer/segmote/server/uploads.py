"""Reading request bodies within limits, and turning an upload into a :class:`Volume`.

An upload is a volume file (NIfTI, NRRD, MHA), a zip of one DICOM folder, or
a raw array with its geometry (see :class:`segmote.wire.UploadDescription`).
Files are written to a private temporary folder, read with the engine's
reader, and deleted; the names of uploaded files are never logged.
"""

from __future__ import annotations

import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Optional

import numpy as np
import SimpleITK as sitk
from starlette.requests import Request

from ..engine.volume import Volume, read_volume, volume_from_array
from ..wire import (
    FORMAT_ARRAY,
    FORMAT_DICOM_ZIP,
    PayloadTooLargeError,
    UploadDescription,
    WireFormatError,
    decode_array,
    decompress_bounded,
)
from .errors import TooLargeError

# Members of a DICOM zip: a CT or MR series rarely exceeds a few thousand files.
MAX_ZIP_MEMBERS = 20_000
COPY_BLOCK_BYTES = 1 << 20


async def read_body(request: Request, limit_bytes: int, body_name: str) -> bytes:
    """Read a request body, stopping with HTTP 413 as soon as it exceeds ``limit_bytes``.

    A ``Content-Length`` above the limit is rejected before any byte is read.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise _too_large(body_name, int(declared), limit_bytes)
    chunks = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit_bytes:
            raise _too_large(body_name, received, limit_bytes, lower_bound=True)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(body_name: str, size: int, limit: int, lower_bound: bool = False) -> TooLargeError:
    size_text = f"more than {limit}" if lower_bound else str(size)
    return TooLargeError(
        f"{body_name} of {size_text} bytes exceeds the server limit of {limit} bytes "
        f"({limit / (1 << 20):.1f} MiB); crop or downsample the volume, or ask for a larger --max-upload-mb",
        field="body",
    )


def volume_from_upload(description: UploadDescription, body: bytes, expanded_limit_bytes: int) -> Volume:
    """Decode an upload body into a :class:`Volume`.

    Raises:
        PayloadTooLargeError: the decompressed or extracted data exceed ``expanded_limit_bytes``.
        InputError: the body is not a readable volume of the declared format.
    """
    if description.format == FORMAT_ARRAY:
        assert description.array is not None
        array = decode_array(description.array, body, expanded_limit_bytes, "body")
        return volume_from_array(
            array, description.origin_lps, description.spacing_ijk, description.direction_lps, description.modality
        )

    if description.compression == "zlib":
        body = decompress_bounded(body, expanded_limit_bytes, "body")
    folder = Path(tempfile.mkdtemp(prefix="segmote-upload-"))
    try:
        if description.format == FORMAT_DICOM_ZIP:
            source = folder / "series"
            archive = folder / "upload.zip"
            archive.write_bytes(body)
            extract_zip(archive, source, expanded_limit_bytes)
        else:
            source = folder / f"upload.{description.format}"
            source.write_bytes(body)
            check_image_size(source, expanded_limit_bytes)
        volume = read_volume(source, series=description.series, modality=description.modality)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    # The temporary files are gone; keep no paths to them.
    volume.path = None
    volume.source_files = []
    return volume


def check_image_size(path: Path, limit_bytes: int) -> None:
    """Read only an image file's header and reject it if its voxels would exceed ``limit_bytes``."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise WireFormatError(
            "the uploaded file is not a readable image of the declared format; check the format field", "format"
        ) from None
    voxels = int(np.prod(reader.GetSize(), dtype=np.int64))
    component_bytes = sitk.GetArrayViewFromImage(sitk.Image(1, 1, reader.GetPixelID())).itemsize
    size = voxels * reader.GetNumberOfComponents() * component_bytes
    if size > limit_bytes:
        raise PayloadTooLargeError(
            f"the uploaded image of size {list(reader.GetSize())} takes {size} bytes in memory, "
            f"more than the limit of {limit_bytes} bytes",
            size,
            limit_bytes,
            "body",
        )


def extract_zip(archive: Path, target: Path, limit_bytes: int) -> None:
    """Extract a zip into ``target``, rejecting unsafe member names and bounding the extracted size.

    Absolute names, ``..`` components, drive letters and symbolic links are
    rejected. Sizes are counted while copying, not taken from the zip header.

    Raises:
        WireFormatError: not a zip, an unsafe or encrypted member, or too many members.
        PayloadTooLargeError: the members expand beyond ``limit_bytes``.
    """
    try:
        handle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError):
        raise WireFormatError("the upload is not a valid zip file; zip the DICOM folder and send it again", "body") from None
    with handle:
        members = handle.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise WireFormatError(f"the zip has {len(members)} members, more than {MAX_ZIP_MEMBERS}", "body")
        target.mkdir(parents=True)
        written = 0
        for number, member in enumerate(members):
            relative = _safe_member_path(member)
            if relative is None:
                continue
            written = _extract_member(handle, member, target / f"{number:06d}_{relative.name}", written, limit_bytes)


def _safe_member_path(member: zipfile.ZipInfo) -> Optional[PurePosixPath]:
    """Return the member's relative path, None for folders, or raise for unsafe names."""
    name = member.filename.replace("\\", "/")
    path = PurePosixPath(name)
    unsafe = path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0])
    if unsafe:
        raise WireFormatError(f"zip member {member.filename!r} has an absolute or parent-folder path; zip the folder's contents", "body")
    if stat.S_ISLNK(member.external_attr >> 16):
        raise WireFormatError(f"zip member {member.filename!r} is a symbolic link; zip the files themselves", "body")
    if member.is_dir() or not path.name:
        return None
    if member.flag_bits & 0x1:
        raise WireFormatError("the zip is encrypted; send an unencrypted zip", "body")
    return path


def _extract_member(handle: zipfile.ZipFile, member: zipfile.ZipInfo, destination: Path, written: int, limit: int) -> int:
    """Copy one member to ``destination`` (flat, so no folder can be escaped); return the running total."""
    try:
        with handle.open(member) as source, destination.open("wb") as output:
            while True:
                block = source.read(COPY_BLOCK_BYTES)
                if not block:
                    break
                written += len(block)
                if written > limit:
                    raise PayloadTooLargeError(
                        f"the zip expands to more than {limit} bytes (limit {limit} bytes)", written, limit, "body"
                    )
                output.write(block)
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError, OSError) as error:
        raise WireFormatError(f"cannot extract the zip: {type(error).__name__}; zip the DICOM folder again", "body") from None
    return written
