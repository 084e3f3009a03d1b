"""The wire format shared by client and server: arrays, regions, uploads, limits; and the client's import rules."""

from __future__ import annotations

import ast
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from segmote.errors import InputError
from segmote.wire import (
    ArrayDescription,
    PayloadTooLargeError,
    RegionDescription,
    UploadDescription,
    WireFormatError,
    apply_region,
    changed_box,
    decode_array,
    decompress_bounded,
    encode_array,
    load_header_json,
)

PACKAGE = Path(__file__).resolve().parents[1] / "SegMoTESlicer" / "segmote"


@pytest.mark.parametrize("dtype", ["bool", "uint8", "int16", "uint16", "int32", "float32", "float64"])
def test_array_round_trip(dtype: str) -> None:
    rng = np.random.default_rng(7)
    array = (rng.normal(size=(3, 5, 7)) * 100).astype(dtype)
    description, payload = encode_array(array)
    decoded = decode_array(ArrayDescription.from_json(description.to_json()), payload, array.nbytes)
    assert decoded.dtype == array.dtype
    assert np.array_equal(decoded, array)
    assert decoded.flags.writeable


def test_big_endian_arrays_are_sent_little_endian() -> None:
    array = np.arange(12, dtype=">i2").reshape(1, 3, 4)
    description, payload = encode_array(array)
    assert zlib.decompress(payload)[:4] == b"\x00\x00\x01\x00"
    assert np.array_equal(decode_array(description, payload, 100), array)


def test_decode_rejects_wrong_byte_count() -> None:
    description, payload = encode_array(np.zeros((2, 2, 2), dtype=np.int16))
    wrong = ArrayDescription("int16", (2, 2, 3), "zlib")
    with pytest.raises(WireFormatError, match="needs 24"):
        decode_array(wrong, payload, 1000)


def test_decode_rejects_arrays_beyond_limit() -> None:
    description = ArrayDescription("float32", (100, 100, 100), "zlib")
    with pytest.raises(PayloadTooLargeError) as raised:
        decode_array(description, zlib.compress(b""), 1000)
    assert raised.value.size_bytes == 4_000_000
    assert raised.value.limit_bytes == 1000


def test_decompress_bounded_stops_a_bomb() -> None:
    bomb = zlib.compress(bytes(10_000_000), 9)
    with pytest.raises(PayloadTooLargeError):
        decompress_bounded(bomb, 1_000_000)
    assert len(decompress_bounded(bomb, 10_000_000)) == 10_000_000  # control: the limit itself passes


@pytest.mark.parametrize("data, message", [(b"garbage", "not a valid zlib"), (zlib.compress(b"abc" * 100)[:-6], "truncated")])
def test_decompress_bounded_rejects_corrupt_streams(data: bytes, message: str) -> None:
    with pytest.raises(WireFormatError, match=message):
        decompress_bounded(data, 1000)


def test_changed_box_bounds_the_difference() -> None:
    previous = np.zeros((10, 20, 30), dtype=bool)
    previous[2, 3:5, 4:6] = True
    current = previous.copy()
    current[7, 10, 20] = True
    current[2, 3, 4] = False
    assert changed_box(previous, current) == (slice(2, 8), slice(3, 11), slice(4, 21))
    assert changed_box(None, current) == (slice(2, 8), slice(3, 11), slice(4, 21))
    assert changed_box(current, current) == (slice(0, 0), slice(0, 0), slice(0, 0))


def region_for(previous: np.ndarray | None, current: np.ndarray, replace: bool) -> tuple[RegionDescription, bytes]:
    box = changed_box(previous, current)
    description, payload = encode_array(current[box])
    region = RegionDescription("liver", 1, replace, tuple(b.start for b in box), description, 0.9, (("axial", 2),), 1, {})
    return RegionDescription.from_json(region.to_json()), payload


def test_apply_region_reproduces_the_new_mask() -> None:
    rng = np.random.default_rng(3)
    previous = rng.random((6, 16, 16)) > 0.7
    current = previous.copy()
    current[3, 4:9, 2:12] = rng.random((5, 10)) > 0.5
    region, payload = region_for(previous, current, replace=False)
    assert region.array.shape[0] == 1  # only slice 3 changed

    copy = previous.copy()
    apply_region(copy, region, payload)
    assert np.array_equal(copy, current)

    # Negative control: applied to another base, the result is not the new mask.
    other = ~previous
    apply_region(other, region, payload)
    assert not np.array_equal(other, current)


def test_replace_region_clears_a_stale_copy() -> None:
    current = np.zeros((4, 8, 8), dtype=bool)
    current[1, 2:4, 2:4] = True
    region, payload = region_for(None, current, replace=True)
    stale = np.ones_like(current)
    apply_region(stale, region, payload)
    assert np.array_equal(stale, current)


def test_region_outside_the_volume_is_rejected() -> None:
    current = np.ones((1, 4, 4), dtype=bool)
    region, payload = region_for(None, current, replace=False)
    with pytest.raises(WireFormatError, match="does not fit"):
        apply_region(np.zeros((1, 3, 3), dtype=bool), region, payload)


def test_upload_description_round_trip() -> None:
    description, _ = encode_array(np.zeros((2, 3, 4), dtype=np.int16))
    upload = UploadDescription(
        "array", "zlib", None, "lung", "CT", description, (1.0, 2.0, 3.0), (0.5, 0.5, 2.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)
    )
    parsed = UploadDescription.from_json(upload.to_json())
    assert parsed.array == description
    assert parsed.origin_lps == (1.0, 2.0, 3.0)
    assert parsed.window == "lung"


@pytest.mark.parametrize(
    "value, field",
    [
        ({"format": "png"}, "format"),
        ({"format": "nii", "compression": "gzip"}, "compression"),
        ({"format": "nii", "series": ""}, "series"),
        ({"format": "array", "compression": "none"}, "compression"),
        ({"format": "array", "compression": "zlib", "array": {"dtype": "complex64", "shape": [1, 1, 1], "encoding": "zlib"}}, "array.dtype"),
        ({"format": "array", "compression": "zlib", "array": {"dtype": "int16", "shape": [1, 1, 1], "encoding": "bits+zlib"}}, "array.encoding"),
        ({"format": "array", "compression": "zlib", "array": {"dtype": "int16", "shape": [1, 1], "encoding": "zlib"}}, "array.shape"),
        (
            {"format": "array", "compression": "zlib", "array": {"dtype": "int16", "shape": [1, 1, 1], "encoding": "zlib"},
             "origin_lps": [0, 0, "a"], "spacing_ijk": [1, 1, 1], "direction_lps": [1, 0, 0, 0, 1, 0, 0, 0, 1]},
            "origin_lps",
        ),
        (
            {"format": "array", "compression": "zlib", "array": {"dtype": "int16", "shape": [1, 1, 1], "encoding": "zlib"},
             "origin_lps": [0, 0, 0], "spacing_ijk": [1, 1, 1], "direction_lps": [1, 0, 0]},
            "direction_lps",
        ),
    ],
)
def test_invalid_upload_fields_are_named(value: dict, field: str) -> None:
    with pytest.raises(WireFormatError) as raised:
        UploadDescription.from_json(value)
    assert raised.value.field == field
    assert isinstance(raised.value, InputError)


@pytest.mark.parametrize("text", [None, "", "[1, 2]", "{bad", "x" * 9000])
def test_header_json_rejects_non_objects(text: str | None) -> None:
    with pytest.raises(WireFormatError):
        load_header_json(text, "X-Test")


def test_client_import_loads_no_torch() -> None:
    code = (
        "import sys, segmote.client, segmote.wire\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'SimpleITK', 'fastapi', 'segmote.engine'))\n"
        "heavy += [m for m in sys.modules if m.startswith(('segmote.engine', 'segmote.model', 'segmote.server'))]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_import_check_detects_torch() -> None:
    # Negative control: the same check reports torch when something imports it.
    code = "import sys, torch, segmote.client\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "True"


@pytest.mark.parametrize("path", sorted((PACKAGE / "client").glob("*.py")) + [PACKAGE / "wire.py"], ids=lambda p: p.name)
def test_client_files_parse_as_python_3_9(path: Path) -> None:
    source = path.read_text()
    ast.parse(source, feature_version=(3, 9))
    # Annotations like "int | None" run on 3.9 only when evaluated lazily.
    assert "from __future__ import annotations" in source
