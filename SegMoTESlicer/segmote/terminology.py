"""Structure names to DICOM segment terminology (SNOMED CT codes) and display colours.

One table, ``segmote/data/terminology.json``, serves the DICOM-SEG writer, the
``.seg.nrrd`` writer and the Slicer module. It covers every structure name of
TotalSegmentator's "total" and "total_mr" tables plus a few common prompted
targets (lesion, tumor, mass, cyst, polyp, blood_vessel).

Codes come from pydicom's SNOMED CT dictionary (``pydicom.sr.codedict.codes.SCT``,
pydicom 3.0). A structure with its own concept there uses it. A left or right
structure without a sided concept in pydicom uses the structure concept plus a
laterality modifier (SCT 7771000 Left, 24028007 Right). Structures without a
concept in that dictionary (hip bones, gluteal, iliopsoas and autochthonous back
muscles, S1, intervertebral discs, portal plus splenic vein) use the generic
SCT 91723000 "Anatomical Structure" type, and the segment label carries the
name. Ribs use SCT 113197003 "Rib" plus laterality, and the rib number is only in
the label. Such entries have ``specific = False``. The property category is
SCT 91723000 "Anatomical Structure" (DICOM CID 7150) for anatomy and SCT
49755003 "Morphologically Abnormal Structure" for lesions.

Names not in the table get the generic code and a colour derived from the name,
so every segment can be written; :func:`is_known` tells them apart.

This module imports neither torch nor pydicom (the Slicer module uses it).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Optional

TABLE_RESOURCE = "terminology.json"


@dataclass(frozen=True)
class Code:
    """A coded concept: code value, coding scheme designator and code meaning."""

    value: str
    scheme: str
    meaning: str


ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")


@dataclass(frozen=True)
class Term:
    """The DICOM segment terminology and display colour of one structure.

    Attributes:
        name: the structure name (TotalSegmentator snake_case vocabulary where one exists).
        category: SegmentedPropertyCategoryCodeSequence value.
        type: SegmentedPropertyTypeCodeSequence value.
        type_modifier: SegmentedPropertyTypeModifierCodeSequence value (laterality), if any.
        anatomic_region: AnatomicRegionSequence value (for lesions: the organ), if any.
        anatomic_region_modifier: laterality of ``anatomic_region``, if any.
        specific: False when ``type`` is a parent or generic concept and only the
            segment label names the structure exactly.
        color: recommended display colour, RGB 0-255.
    """

    name: str
    category: Code
    type: Code
    type_modifier: Optional[Code]
    anatomic_region: Optional[Code]
    anatomic_region_modifier: Optional[Code]
    specific: bool
    color: tuple[int, int, int]


def lookup(name: str) -> Term:
    """Return the term of a structure name; unknown names get the generic code and a name-derived colour.

    Matching ignores case and treats spaces and hyphens as underscores.
    """
    table = _table()
    key = _normalise(name)
    if key in table:
        return table[key]
    return Term(
        name=name,
        category=ANATOMICAL_STRUCTURE,
        type=ANATOMICAL_STRUCTURE,
        type_modifier=None,
        anatomic_region=None,
        anatomic_region_modifier=None,
        specific=False,
        color=_color_from_name(name),
    )


def is_known(name: str) -> bool:
    """Return whether ``name`` has an entry in the terminology table."""
    return _normalise(name) in _table()


def all_terms() -> dict[str, Term]:
    """Return every entry of the table, keyed by structure name (as written in the table)."""
    return {term.name: term for term in _table().values()}


def _normalise(name: str) -> str:
    return str(name).strip().lower().replace(" ", "_").replace("-", "_")


@lru_cache(maxsize=1)
def _table() -> dict[str, Term]:
    text = resources.files("segmote").joinpath("data", TABLE_RESOURCE).read_text(encoding="utf-8")
    structures = json.loads(text)["structures"]
    return {_normalise(name): _term(name, entry) for name, entry in structures.items()}


def _term(name: str, entry: dict) -> Term:
    return Term(
        name=name,
        category=_code(entry["category"]),
        type=_code(entry["type"]),
        type_modifier=_code(entry.get("type_modifier")),
        anatomic_region=_code(entry.get("anatomic_region")),
        anatomic_region_modifier=_code(entry.get("anatomic_region_modifier")),
        specific=bool(entry["specific"]),
        color=tuple(int(c) for c in entry["color"]),
    )


def _code(entry: Optional[dict]) -> Optional[Code]:
    if entry is None:
        return None
    return Code(str(entry["value"]), str(entry["scheme"]), str(entry["meaning"]))


def _color_from_name(name: str) -> tuple[int, int, int]:
    """Return a stable mid-brightness colour for a name outside the table (the same name, the same colour)."""
    digest = zlib.crc32(_normalise(name).encode("utf-8"))
    return tuple(80 + (digest >> shift) % 150 for shift in (0, 8, 16))
