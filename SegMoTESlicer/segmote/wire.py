"""The HTTP wire format shared by the SegMoTE server and its client.

Everything both sides must agree on lives here: the API version, URL paths,
header names, and how arrays, geometry and changed regions are encoded.

Arrays travel as raw little-endian bytes in C order (numpy ``(K, J, I)``),
compressed with zlib. Boolean masks are first packed eight voxels to a byte
(``numpy.packbits``, big bit order). The description of an array (dtype,
shape, encoding, offset) travels as a JSON object in a header, so the body
stays binary and ``curl --data-binary`` works.

This module imports neither torch nor SimpleITK and runs on Python 3.9.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .errors import InputError

# Major version of the HTTP API. The client rejects a server with another one.
API_VERSION = 1

# URL paths. Placeholders in braces are filled with str.format.
PATH_VERSION = "/v1/version"
PATH_HEALTH = "/v1/health"
PATH_SESSIONS = "/v1/sessions"
PATH_SESSION = "/v1/sessions/{session_id}"
PATH_SEGMENT = "/v1/sessions/{session_id}/segment"
PATH_AUTO_JOBS = "/v1/sessions/{session_id}/auto"
PATH_AUTO_JOB = "/v1/sessions/{session_id}/auto/{job_id}"
PATH_AUTO_JOB_RESULT = "/v1/sessions/{session_id}/auto/{job_id}/result"
PATH_AUTO_JOB_CANCEL = "/v1/sessions/{session_id}/auto/{job_id}/cancel"

# Request headers.
HEADER_AUTHORIZATION = "Authorization"
HEADER_UPLOAD = "X-SegMoTE-Upload"  # JSON object: see UploadDescription
HEADER_BASE_REVISION = "X-SegMoTE-Base-Revision"  # revision of the segment mask that the client has
HEADER_CLIENT_API_VERSION = "X-SegMoTE-API-Version"
# Response headers.
HEADER_ARRAY = "X-SegMoTE-Array"  # JSON object: see ArrayDescription and RegionDescription

MEDIA_TYPE_BINARY = "application/octet-stream"
MEDIA_TYPE_JSON = "application/json"

# zlib levels: level 1 is used for uploads because an upload can be hundreds
# of megabytes, and level 6 would take about three times as long for a few
# percent smaller output (an estimate, not measured here). Masks are small,
# so they get level 6.
UPLOAD_COMPRESSION_LEVEL = 1
MASK_COMPRESSION_LEVEL = 6

COMPRESSIONS = ("zlib", "none")
ENCODING_BITS_ZLIB = "bits+zlib"  # bool array: packbits, then zlib
ENCODING_ZLIB = "zlib"  # numeric array: raw little-endian bytes, then zlib
ENCODINGS = (ENCODING_BITS_ZLIB, ENCODING_ZLIB)

# Voxel types accepted in array uploads and returned in label maps.
ARRAY_DTYPES = ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")

# Upload formats: files the server reads with SimpleITK, a zip of one DICOM
# folder, or a raw array with its geometry.
FILE_FORMATS = ("nii.gz", "nii", "nrrd", "mha")
FORMAT_DICOM_ZIP = "dicom-zip"
FORMAT_ARRAY = "array"
UPLOAD_FORMATS = FILE_FORMATS + (FORMAT_DICOM_ZIP, FORMAT_ARRAY)

# Largest JSON header value either side accepts; geometry and region
# descriptions take a few hundred bytes.
MAX_HEADER_JSON_CHARS = 8192


class WireFormatError(InputError):
    """A body or header that does not follow this wire format; the message names the field."""

    def __init__(self, message: str, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.field = field


class PayloadTooLargeError(WireFormatError):
    """A body, or its decompressed form, larger than the receiver accepts.

    Attributes:
        size_bytes: the size found (or a lower bound when reading stopped early).
        limit_bytes: the largest size accepted.
    """

    def __init__(self, message: str, size_bytes: int, limit_bytes: int, field: Optional[str] = None) -> None:
        super().__init__(message, field)
        self.size_bytes = int(size_bytes)
        self.limit_bytes = int(limit_bytes)


def session_path(template: str, session_id: str, job_id: Optional[str] = None) -> str:
    """Fill a path template with a session id and, for job paths, a job id."""
    if job_id is None:
        return template.format(session_id=session_id)
    return template.format(session_id=session_id, job_id=job_id)


# JSON headers


def dump_header_json(value: Mapping[str, Any]) -> str:
    """Serialise a header value as compact ASCII JSON."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def load_header_json(text: Optional[str], header: str) -> dict[str, Any]:
    """Parse a JSON object from a header, raising :class:`WireFormatError` naming the header."""
    if text is None or not text.strip():
        raise WireFormatError(f"missing header {header}: it must contain a JSON object", header)
    if len(text) > MAX_HEADER_JSON_CHARS:
        raise WireFormatError(f"header {header} has {len(text)} characters, more than {MAX_HEADER_JSON_CHARS}", header)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise WireFormatError(f"header {header} is not valid JSON ({error.msg} at character {error.pos})", header) from None
    if not isinstance(value, dict):
        raise WireFormatError(f"header {header} must contain a JSON object, got {type(value).__name__}", header)
    return value


# Field checks, each naming the field in its message


def _field_int_list(value: Any, field: str, length: int, minimum: int) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) != length:
        raise WireFormatError(f"{field} must be a list of {length} whole numbers, got {value!r}", field)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in value):
        raise WireFormatError(f"{field} must contain whole numbers >= {minimum}, got {value!r}", field)
    return tuple(value)


def _field_float_list(value: Any, field: str, length: int) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) != length:
        raise WireFormatError(f"{field} must be a list of {length} numbers, got {value!r}", field)
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in value):
        raise WireFormatError(f"{field} must contain finite numbers, got {value!r}", field)
    return tuple(float(v) for v in value)


def _field_choice(value: Any, field: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise WireFormatError(f"invalid {field} {value!r}: use one of {', '.join(choices)}", field)
    return str(value)


def _field_optional_text(value: Any, field: str) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 256:
        raise WireFormatError(f"{field} must be a non-empty string of at most 256 characters or null, got {value!r}", field)
    return value.strip()


# Compression


def compress(data: bytes, level: int) -> bytes:
    """Compress bytes with zlib at ``level`` (0-9)."""
    return zlib.compress(data, level)


def decompress_bounded(data: bytes, limit_bytes: int, field: str = "body") -> bytes:
    """Decompress a zlib stream, refusing to produce more than ``limit_bytes``.

    Raises:
        PayloadTooLargeError: the stream expands beyond ``limit_bytes``.
        WireFormatError: the stream is corrupt, truncated or followed by extra bytes.
    """
    decompressor = zlib.decompressobj()
    try:
        output = decompressor.decompress(data, limit_bytes + 1)
    except zlib.error as error:
        raise WireFormatError(f"{field} is not a valid zlib stream: {error}", field) from None
    if len(output) > limit_bytes or decompressor.unconsumed_tail:
        raise PayloadTooLargeError(
            f"{field} expands to more than {limit_bytes} bytes when decompressed (limit {limit_bytes} bytes)",
            len(output),
            limit_bytes,
            field,
        )
    if not decompressor.eof:
        raise WireFormatError(f"{field} is a truncated zlib stream: send the whole compressed data", field)
    if decompressor.unused_data:
        raise WireFormatError(f"{field} has {len(decompressor.unused_data)} bytes after the end of its zlib stream", field)
    return output


# Arrays


@dataclass(frozen=True)
class ArrayDescription:
    """Wire description of an array: its type, shape and encoding.

    Attributes:
        dtype: one of :data:`ARRAY_DTYPES`.
        shape: numpy shape, ``(K, J, I)`` for volumes and masks, ``(K, J, I, 3)`` for RGB.
        encoding: :data:`ENCODING_BITS_ZLIB` for bool, :data:`ENCODING_ZLIB` otherwise.
    """

    dtype: str
    shape: tuple[int, ...]
    encoding: str

    @property
    def nbytes(self) -> int:
        """Size of the decoded array in bytes (bool counts one byte per voxel)."""
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def to_json(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        return {"dtype": self.dtype, "shape": list(self.shape), "encoding": self.encoding}

    @staticmethod
    def from_json(value: Mapping[str, Any], field: str = "array") -> "ArrayDescription":
        """Validate the JSON form; ``field`` prefixes the field names in error messages."""
        dtype = _field_choice(value.get("dtype"), f"{field}.dtype", ARRAY_DTYPES)
        raw_shape = value.get("shape")
        if not isinstance(raw_shape, list) or not 1 <= len(raw_shape) <= 4:
            raise WireFormatError(f"{field}.shape must be a list of 1 to 4 sizes, got {raw_shape!r}", f"{field}.shape")
        shape = _field_int_list(raw_shape, f"{field}.shape", len(raw_shape), 0)
        encoding = _field_choice(value.get("encoding"), f"{field}.encoding", ENCODINGS)
        expected = ENCODING_BITS_ZLIB if dtype == "bool" else ENCODING_ZLIB
        if encoding != expected:
            raise WireFormatError(f"{field}.encoding must be {expected!r} for dtype {dtype}, got {encoding!r}", f"{field}.encoding")
        return ArrayDescription(dtype, shape, encoding)


def encode_array(array: np.ndarray, level: int = MASK_COMPRESSION_LEVEL) -> tuple[ArrayDescription, bytes]:
    """Encode an array for the wire; return its description and the compressed bytes."""
    array = np.asarray(array)
    dtype = array.dtype
    if dtype == np.bool_:
        payload = np.packbits(np.ascontiguousarray(array).reshape(-1)).tobytes()
        return ArrayDescription("bool", tuple(array.shape), ENCODING_BITS_ZLIB), compress(payload, level)
    if dtype.name not in ARRAY_DTYPES:
        raise InputError(f"arrays of type {dtype} cannot be sent; convert to one of {', '.join(ARRAY_DTYPES)}")
    little_endian = np.ascontiguousarray(array, dtype=dtype.newbyteorder("<"))
    return ArrayDescription(dtype.name, tuple(array.shape), ENCODING_ZLIB), compress(little_endian.tobytes(), level)


def decode_array(description: ArrayDescription, payload: bytes, limit_bytes: int, field: str = "body") -> np.ndarray:
    """Decode bytes made by :func:`encode_array` into a writable array.

    Raises:
        PayloadTooLargeError: the described array is larger than ``limit_bytes``.
        WireFormatError: the bytes do not match the description.
    """
    if description.nbytes > limit_bytes:
        raise PayloadTooLargeError(
            f"an array of shape {list(description.shape)} and type {description.dtype} takes "
            f"{description.nbytes} bytes, more than the limit of {limit_bytes} bytes",
            description.nbytes,
            limit_bytes,
            field,
        )
    count = int(np.prod(description.shape, dtype=np.int64))
    if description.dtype == "bool":
        expected = (count + 7) // 8
        raw = decompress_bounded(payload, expected, field)
        if len(raw) != expected:
            raise WireFormatError(f"{field} contains {len(raw)} bytes of packed bits, expected {expected}", field)
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=count)
        return bits.astype(bool).reshape(description.shape)
    dtype = np.dtype(description.dtype).newbyteorder("<")
    expected = count * dtype.itemsize
    raw = decompress_bounded(payload, expected, field)
    if len(raw) != expected:
        raise WireFormatError(
            f"{field} contains {len(raw)} bytes, but shape {list(description.shape)} of type {description.dtype} needs {expected}",
            field,
        )
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(description.shape)


# Uploads


@dataclass(frozen=True)
class UploadDescription:
    """The ``X-SegMoTE-Upload`` header of a session upload.

    For a file or DICOM zip the body is the file's bytes (``compression``
    ``none``) or their zlib stream. For ``format == "array"`` the body is an
    array encoded by :func:`encode_array` and the geometry fields are required.

    Attributes:
        format: one of :data:`UPLOAD_FORMATS`.
        compression: ``zlib`` or ``none`` (files and zips only; arrays are always zlib).
        series: SeriesInstanceUID or SeriesNumber, for a zip holding several DICOM series.
        window: CT window name (``soft_tissue``, ``lung``, ``bone``, ``brain``) or None.
        modality: DICOM modality such as ``CT`` or ``MR``, or None when unknown.
        array: for arrays, the array description.
        origin_lps: for arrays, LPS position (mm) of voxel (0, 0, 0).
        spacing_ijk: for arrays, voxel size (mm) along i, j, k.
        direction_lps: for arrays, 3 x 3 direction matrix, row-major (columns are the i, j, k axes in LPS).
    """

    format: str
    compression: str = "none"
    series: Optional[str] = None
    window: Optional[str] = None
    modality: Optional[str] = None
    array: Optional[ArrayDescription] = None
    origin_lps: Optional[tuple[float, float, float]] = None
    spacing_ijk: Optional[tuple[float, float, float]] = None
    direction_lps: Optional[tuple[float, ...]] = None

    def to_json(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        value: dict[str, Any] = {"format": self.format, "compression": self.compression}
        for key in ("series", "window", "modality"):
            if getattr(self, key) is not None:
                value[key] = getattr(self, key)
        if self.array is not None:
            value["array"] = self.array.to_json()
            value["origin_lps"] = list(self.origin_lps or ())
            value["spacing_ijk"] = list(self.spacing_ijk or ())
            value["direction_lps"] = list(self.direction_lps or ())
        return value

    @staticmethod
    def from_json(value: Mapping[str, Any]) -> "UploadDescription":
        """Validate the JSON form of the header."""
        upload_format = _field_choice(value.get("format"), "format", UPLOAD_FORMATS)
        compression = _field_choice(value.get("compression", "none"), "compression", COMPRESSIONS)
        series = value.get("series")
        if isinstance(series, int) and not isinstance(series, bool):
            series = str(series)
        series = _field_optional_text(series, "series")
        window = _field_optional_text(value.get("window"), "window")
        modality = _field_optional_text(value.get("modality"), "modality")
        if upload_format != FORMAT_ARRAY:
            return UploadDescription(upload_format, compression, series, window, modality)

        if compression != "zlib":
            raise WireFormatError("compression must be 'zlib' for array uploads", "compression")
        raw_array = value.get("array")
        if not isinstance(raw_array, dict):
            raise WireFormatError("array must be an object with dtype, shape and encoding for array uploads", "array")
        array = ArrayDescription.from_json(raw_array)
        if len(array.shape) not in (3, 4) or min(array.shape) < 1 or (len(array.shape) == 4 and array.shape[3] != 3):
            raise WireFormatError(
                f"array.shape must be (K, J, I) or (K, J, I, 3) with positive sizes, got {list(array.shape)}", "array.shape"
            )
        origin = _field_float_list(value.get("origin_lps"), "origin_lps", 3)
        spacing = _field_float_list(value.get("spacing_ijk"), "spacing_ijk", 3)
        if min(spacing) <= 0:
            raise WireFormatError(f"spacing_ijk must contain positive sizes (mm), got {list(spacing)}", "spacing_ijk")
        direction = _field_float_list(value.get("direction_lps"), "direction_lps", 9)
        return UploadDescription(
            upload_format, compression, series, window, modality, array, origin, spacing, direction  # type: ignore[arg-type]
        )


# Changed regions of segment masks


@dataclass(frozen=True)
class RegionDescription:
    """The part of a segment mask that changed, as sent in the ``X-SegMoTE-Array`` header.

    The body contains the new mask inside the box ``offset_kji .. offset_kji +
    shape_kji`` (numpy order, voxels), encoded by :func:`encode_array`.
    Outside the box the mask is unchanged, unless ``replace`` is true: then
    it is empty outside the box. An empty box (a zero in ``shape_kji``) means
    nothing changed.

    Attributes:
        name: segment name.
        revision: revision of the segment's mask on the server after this request.
        replace: whether the client must clear the mask before writing the box.
        offset_kji: first voxel of the box, numpy order.
        array: description of the box's contents (bool, shape ``(dK, dJ, dI)``).
        iou: predicted IoU on the prompted slice.
        slices: ``[view, index]`` of every slice the model predicted.
        encoder_calls: slices the server's session has encoded so far.
        timings_ms: server-side time per stage, in milliseconds.
    """

    name: str
    revision: int
    replace: bool
    offset_kji: tuple[int, int, int]
    array: ArrayDescription
    iou: float
    slices: tuple[tuple[str, int], ...]
    encoder_calls: int
    timings_ms: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        return {
            "name": self.name,
            "revision": self.revision,
            "replace": self.replace,
            "offset_kji": list(self.offset_kji),
            "array": self.array.to_json(),
            "iou": self.iou,
            "slices": [[view, index] for view, index in self.slices],
            "encoder_calls": self.encoder_calls,
            "timings_ms": {key: round(value, 3) for key, value in self.timings_ms.items()},
        }

    @staticmethod
    def from_json(value: Mapping[str, Any]) -> "RegionDescription":
        """Validate the JSON form."""
        array = ArrayDescription.from_json(value.get("array") or {}, "array")
        if array.dtype != "bool" or len(array.shape) != 3:
            raise WireFormatError(f"a region must be a 3-D bool array, got {array.dtype} {list(array.shape)}", "array")
        offset = _field_int_list(value.get("offset_kji"), "offset_kji", 3, 0)
        slices = tuple((str(view), int(index)) for view, index in value.get("slices", []))
        timings = {str(key): float(ms) for key, ms in (value.get("timings_ms") or {}).items()}
        return RegionDescription(
            name=str(value.get("name", "")),
            revision=int(value.get("revision", 0)),
            replace=bool(value.get("replace", False)),
            offset_kji=offset,  # type: ignore[arg-type]
            array=array,
            iou=float(value.get("iou", 0.0)),
            slices=slices,
            encoder_calls=int(value.get("encoder_calls", 0)),
            timings_ms=timings,
        )


def changed_box(previous: Optional[np.ndarray], current: np.ndarray) -> tuple[slice, slice, slice]:
    """Return the bounding box ``(k, j, i)`` of voxels where two masks ``(K, J, I)`` differ.

    With ``previous`` None the box bounds the voxels set in ``current``. When
    nothing differs, every slice is empty (``slice(0, 0)``).
    """
    difference = current if previous is None else np.not_equal(previous, current)
    k_any = np.flatnonzero(difference.any(axis=(1, 2)))
    if k_any.size == 0:
        return (slice(0, 0), slice(0, 0), slice(0, 0))
    k0, k1 = int(k_any[0]), int(k_any[-1]) + 1
    band = difference[k0:k1]
    j_any = np.flatnonzero(band.any(axis=(0, 2)))
    i_any = np.flatnonzero(band.any(axis=(0, 1)))
    return (slice(k0, k1), slice(int(j_any[0]), int(j_any[-1]) + 1), slice(int(i_any[0]), int(i_any[-1]) + 1))


def apply_region(mask: np.ndarray, region: RegionDescription, payload: bytes) -> None:
    """Write a changed region into a client's copy of a segment mask ``(K, J, I)`` bool, in place.

    Raises:
        WireFormatError: the region does not fit inside ``mask``.
    """
    end = [offset + size for offset, size in zip(region.offset_kji, region.array.shape)]
    if any(stop > limit for stop, limit in zip(end, mask.shape)):
        raise WireFormatError(
            f"region at {list(region.offset_kji)} of shape {list(region.array.shape)} does not fit a volume "
            f"of shape {list(mask.shape)}",
            "offset_kji",
        )
    box = decode_array(region.array, payload, region.array.nbytes, "region")
    if region.replace:
        mask[...] = False
    if box.size:
        k0, j0, i0 = region.offset_kji
        mask[k0 : end[0], j0 : end[1], i0 : end[2]] = box
