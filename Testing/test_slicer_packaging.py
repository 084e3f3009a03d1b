"""Extension packaging: resources found from the module file in both layouts, CMake lists, icons, package checks."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from segmote.errors import InputError
from SegMoTELib import dependencies
from SegMoTELib.resources import find_resource

REPOSITORY = Path(__file__).resolve().parents[1]
MODULE_FOLDER = REPOSITORY / "SegMoTESlicer"


def test_resources_found_in_checkout():
    ui_path = find_resource(str(MODULE_FOLDER / "SegMoTE.py"), "UI/SegMoTE.ui")

    assert Path(ui_path) == REPOSITORY / "Resources" / "UI" / "SegMoTE.ui"


def test_resources_found_in_installed_layout(tmp_path):
    """An installed extension has qt-scripted-modules/SegMoTE.py and qt-scripted-modules/Resources/."""
    installed = tmp_path / "lib" / "Slicer-5.6" / "qt-scripted-modules"
    (installed / "Resources" / "Icons").mkdir(parents=True)
    shutil.copy(REPOSITORY / "Resources" / "Icons" / "SegMoTE.png", installed / "Resources" / "Icons")
    module_file = installed / "SegMoTE.py"
    module_file.write_text("# stand-in for the installed module file\n")

    assert Path(find_resource(str(module_file), "Icons/SegMoTE.png")) == installed / "Resources" / "Icons" / "SegMoTE.png"
    with pytest.raises(InputError, match="UI/SegMoTE.ui not found"):
        find_resource(str(module_file), "UI/SegMoTE.ui")


def test_module_cmake_lists_every_script_and_resource():
    text = (MODULE_FOLDER / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "SegMoTE")

    listed = set(re.findall(r"^\s+(\S+\.(?:py|ui|png))\s*$", text, flags=re.MULTILINE))
    scripts = {"SegMoTE.py"} | {f"SegMoTELib/{path.name}" for path in (MODULE_FOLDER / "SegMoTELib").glob("*.py")}
    resources = {f"Resources/{path.relative_to(REPOSITORY / 'Resources').as_posix()}"
                 for path in (REPOSITORY / "Resources").rglob("*") if path.suffix in (".ui", ".png") and "Screenshots" not in path.parts}
    assert scripts - listed == set(), "scripts missing from SegMoTESlicer/CMakeLists.txt"
    assert resources - listed == set(), "resources missing from SegMoTESlicer/CMakeLists.txt"
    assert "slicerMacroBuildScriptedModule(" in text
    assert "slicer_add_python_unittest(SCRIPT SegMoTE.py" in text


def test_extension_cmake_metadata():
    text = (REPOSITORY / "CMakeLists.txt").read_text()

    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                     "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"^set\({variable} ", text, flags=re.MULTILINE), f"{variable} is not set"
    assert len(re.findall(r"^set\(EXTENSION_REPOSITORY_URL ", text, flags=re.MULTILINE)) == 1
    urls = re.findall(r"https?://\S+", text)
    assert len(urls) == 1, f"URLs must be built from EXTENSION_REPOSITORY_URL, found {urls}"
    assert "Apache-2.0" in text
    assert "add_subdirectory(SegMoTESlicer)" in text


@pytest.mark.parametrize("path", ["SegMoTE.png", "Resources/Icons/SegMoTE.png"])
def test_icons_are_real_images(path):
    image = Image.open(REPOSITORY / path).convert("RGBA")

    assert image.size == (128, 128)
    colours = image.resize((32, 32)).getcolors(maxcolors=32 * 32)
    assert len(colours) > 50, "the icon looks like a flat placeholder"


def test_requirement_check_reads_installed_versions():
    assert dependencies.is_satisfied("numpy")
    assert dependencies.is_satisfied("numpy>=1.0")
    assert not dependencies.is_satisfied("numpy>=999.0")
    assert not dependencies.is_satisfied("segmote-no-such-package")
    assert dependencies.missing_requirements(["numpy>=1.0", "segmote-no-such-package>=1"]) == ["segmote-no-such-package>=1"]
    with pytest.raises(ValueError, match="unsupported requirement"):
        dependencies.is_satisfied("numpy<2")


def test_engine_requirements_installed_here():
    """This test machine runs the engine, so nothing in the engine list may be missing."""
    assert dependencies.missing_requirements(dependencies.ENGINE_REQUIREMENTS) == []
    assert not dependencies.torch_missing()
    assert set(dependencies.SERVER_REQUIREMENTS) <= set(dependencies.ENGINE_REQUIREMENTS)
