"""The terminology table: every TotalSegmentator name covered, codes equal to pydicom's SNOMED CT dictionary, colours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.sr.codedict import codes

from segmote.terminology import ANATOMICAL_STRUCTURE, all_terms, is_known, lookup

TABLE = Path(__file__).resolve().parents[1] / "SegMoTESlicer" / "segmote" / "data" / "terminology.json"


@pytest.fixture(scope="module")
def structure_names(shared_data: Path) -> list[str]:
    tables = json.loads((shared_data / "labels_totalsegmentator.json").read_text())
    return sorted(set(tables["total"].values()) | set(tables["total_mr"].values()))


def test_every_totalsegmentator_name_covered(structure_names: list[str]) -> None:
    assert len(structure_names) == 121
    missing = [name for name in structure_names if not is_known(name)]
    assert missing == []


def test_codes_match_pydicom_dictionary() -> None:
    # Every code in the table names the SCT keyword it came from; value and meaning must be pydicom's.
    entries = json.loads(TABLE.read_text())["structures"]
    for name, entry in entries.items():
        for field in ("type", "type_modifier", "anatomic_region", "anatomic_region_modifier"):
            if field not in entry:
                continue
            expected = getattr(codes.SCT, entry[field]["sct_keyword"])
            assert (entry[field]["value"], entry[field]["meaning"]) == (expected.value, expected.meaning), f"{name} {field}"
        category_values = {codes.cid7150.AnatomicalStructure.value, codes.cid7150.MorphologicallyAbnormalStructure.value}
        assert entry["category"]["value"] in category_values, name


def test_specific_codes_used_where_pydicom_has_them() -> None:
    assert lookup("liver").type.value == codes.SCT.Liver.value
    assert lookup("vertebrae_L3").type.value == codes.SCT.L3Vertebra.value
    assert lookup("subclavian_artery_left").type.value == codes.SCT.LeftSubclavianArtery.value
    kidney = lookup("kidney_right")
    assert (kidney.type.value, kidney.type_modifier.value) == (codes.SCT.Kidney.value, codes.SCT.Right.value)
    cyst = lookup("kidney_cyst_left")
    assert cyst.type.value == codes.SCT.Cyst.value
    assert (cyst.anatomic_region.value, cyst.anatomic_region_modifier.value) == (codes.SCT.Kidney.value, codes.SCT.Left.value)


def test_generic_code_for_structures_without_concept() -> None:
    for name in ("hip_left", "gluteus_maximus_right", "iliopsoas_left", "vertebrae_S1", "portal_vein_and_splenic_vein"):
        term = lookup(name)
        assert term.type == ANATOMICAL_STRUCTURE, name
        assert not term.specific, name
    assert lookup("hip_left").type_modifier.value == codes.SCT.Left.value


def test_unknown_name_gets_generic_term() -> None:
    term = lookup("my custom region")
    assert not is_known("my custom region")
    assert term.type == ANATOMICAL_STRUCTURE
    assert term.color == lookup("my custom region").color  # stable
    assert lookup("Liver") == lookup("liver")


def test_colours_valid_and_distinct(structure_names: list[str]) -> None:
    colours = [lookup(name).color for name in structure_names]
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colours)
    assert len(set(colours)) == len(colours)
    assert len(all_terms()) >= len(structure_names)
