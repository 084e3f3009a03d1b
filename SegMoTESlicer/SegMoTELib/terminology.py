"""Structure names to Slicer terminology entries and segment colours.

The codes and colours come from the backend's one terminology table
(:mod:`segmote.terminology`), which the DICOM-SEG writer uses too, so a segment
made in Slicer and a DICOM-SEG written by the server carry the same codes.

Slicer stores a segment's terminology as one string (the segment tag
``TerminologyEntry``), seven fields separated by ``~``::

    context~category~type~typeModifier~anatomicContext~anatomicRegion~anatomicRegionModifier

where each coded field is ``CodingSchemeDesignator^CodeValue^CodeMeaning``
(format of ``vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry``,
Slicer 5.6 to 5.10). This module imports neither slicer, Qt nor torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

# Context names of the DICOM lists that ship with Slicer's Terminologies module.
CATEGORY_TYPE_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

# An empty coded field.
EMPTY = "^^"


@dataclass(frozen=True)
class CodedConcept:
    """One coded concept: ``(CodeValue, CodingSchemeDesignator, CodeMeaning)``, e.g. ``("10200004", "SCT", "Liver")``."""

    value: str
    scheme: str
    meaning: str

    def serialize(self) -> str:
        """Return Slicer's ``Scheme^Value^Meaning`` form."""
        for text in (self.value, self.scheme, self.meaning):
            if "~" in text or "^" in text:
                raise ValueError(f"code field {text!r} contains '~' or '^', which Slicer uses as separators")
        return f"{self.scheme}^{self.value}^{self.meaning}"


@dataclass(frozen=True)
class SegmentStyle:
    """Appearance of a structure as a segment.

    Attributes:
        name: the segment name (the structure name).
        color_rgb: colour as three floats in [0, 1], as vtkSegment.SetColor takes it.
        terminology: Slicer terminology entry string.
    """

    name: str
    color_rgb: tuple[float, float, float]
    terminology: str


def terminology_entry(
    category: CodedConcept,
    type_: CodedConcept,
    type_modifier: Optional[CodedConcept] = None,
    anatomic_region: Optional[CodedConcept] = None,
    anatomic_region_modifier: Optional[CodedConcept] = None,
) -> str:
    """Return the Slicer terminology entry string for a category, type and optional modifiers."""

    def serialize(concept: Optional[CodedConcept]) -> str:
        return concept.serialize() if concept is not None else EMPTY

    fields = [
        CATEGORY_TYPE_CONTEXT,
        category.serialize(),
        type_.serialize(),
        serialize(type_modifier),
        ANATOMIC_CONTEXT,  # Slicer writes the context name also when the region is empty
        serialize(anatomic_region),
        serialize(anatomic_region_modifier),
    ]
    return "~".join(fields)


def parse_terminology_entry(entry: str) -> dict[str, Any]:
    """Split a terminology entry string into its fields (the inverse of :func:`terminology_entry`)."""
    fields = entry.split("~")
    if len(fields) != 7:
        raise ValueError(f"terminology entry {entry!r} has {len(fields)} fields, expected 7")

    def concept(text: str) -> Optional[CodedConcept]:
        scheme, value, meaning = text.split("^")
        return CodedConcept(value, scheme, meaning) if value else None

    return {
        "context": fields[0],
        "category": concept(fields[1]),
        "type": concept(fields[2]),
        "type_modifier": concept(fields[3]),
        "anatomic_context": fields[4],
        "anatomic_region": concept(fields[5]),
        "anatomic_region_modifier": concept(fields[6]),
    }


def _concept(code: Any) -> Optional[CodedConcept]:
    """Convert a :class:`segmote.terminology.Code` (value, scheme, meaning) to :class:`CodedConcept`."""
    if code is None:
        return None
    return CodedConcept(str(code.value), str(code.scheme), str(code.meaning))


def segment_style(structure: str) -> SegmentStyle:
    """Return the segment name, colour and terminology entry for a structure name.

    Names outside the terminology table get the generic "Anatomical Structure"
    code and a colour derived from the name, as the DICOM-SEG writer gives them.
    """
    from segmote import terminology

    term = terminology.lookup(structure)
    red, green, blue = term.color
    entry = terminology_entry(
        _concept(term.category),
        _concept(term.type),
        _concept(term.type_modifier),
        _concept(term.anatomic_region),
        _concept(term.anatomic_region_modifier),
    )
    return SegmentStyle(structure, (red / 255.0, green / 255.0, blue / 255.0), entry)
