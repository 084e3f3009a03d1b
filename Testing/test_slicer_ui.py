"""The module panel ``Resources/UI/SegMoTE.ui``: loads with Qt and has every widget the module file uses.

Slicer's own widgets (ctk*, qMRML*) do not exist outside Slicer, so the test
loads a copy of the ``.ui`` in which each of them is replaced by a plain Qt
widget of similar look. Run this file directly to render the panel picture:

    QT_QPA_PLATFORM=offscreen python Testing/test_slicer_ui.py OUTPUT.png
"""

from __future__ import annotations

import ast
import os
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPOSITORY = Path(__file__).resolve().parents[1]
UI_FILE = REPOSITORY / "Resources" / "UI" / "SegMoTE.ui"
MODULE_FILE = REPOSITORY / "SegMoTESlicer" / "SegMoTE.py"

# Slicer widget class -> (Qt class standing in for it, property renames, properties to drop).
SLICER_WIDGET_STAND_INS = {
    "qMRMLWidget": ("QWidget", {}, set()),
    "ctkCollapsibleButton": ("QGroupBox", {"text": "title"}, {"collapsed"}),
    "qMRMLNodeComboBox": (
        "QComboBox",
        {},
        {"nodeTypes", "showChildNodeTypes", "addEnabled", "removeEnabled", "noneEnabled", "renameEnabled"},
    ),
    "qMRMLSegmentSelectorWidget": ("QComboBox", {}, {"segmentationNodeSelectorVisible", "noneEnabled"}),
    "ctkDirectoryButton": ("QPushButton", {}, set()),
}

# The parameter node class and the widgets bound to it through SlicerParameterName.
PARAMETER_NAMES = {
    "backendMode", "device", "serverUrl", "inputVolume", "segmentation", "propagateLimit",
    "followEditorMasking", "exportFormat", "exportFolder", "addToDicomDatabase",
}


def module_widget_names(module_file: Path = MODULE_FILE) -> set[str]:
    """Return every NAME used as ``self.ui.NAME`` in the module file (parsed, not executed)."""
    tree = ast.parse(module_file.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"
        ):
            names.add(node.attr)
    return names


def ui_widgets(ui_file: Path = UI_FILE) -> dict[str, ElementTree.Element]:
    """Return the ``<widget>`` elements of a .ui file by name."""
    root = ElementTree.parse(ui_file).getroot()
    return {element.get("name"): element for element in root.iter("widget")}


def qt_loadable_copy(ui_file: Path, destination: Path) -> Path:
    """Write a copy of ``ui_file`` whose Slicer widgets are replaced by their Qt stand-ins."""
    tree = ElementTree.parse(ui_file)
    root = tree.getroot()
    for element in root.iter("widget"):
        stand_in = SLICER_WIDGET_STAND_INS.get(element.get("class"))
        if stand_in is None:
            continue
        qt_class, renames, dropped = stand_in
        element.set("class", qt_class)
        for prop in list(element.findall("property")):
            name = prop.get("name")
            if name in dropped:
                element.remove(prop)
            elif name in renames:
                prop.set("name", renames[name])
    for section in ("customwidgets", "connections"):
        found = root.find(section)
        if found is not None:
            root.remove(found)
    tree.write(destination, encoding="UTF-8", xml_declaration=True)
    return destination


def load_panel(ui_copy: Path):
    """Load a Qt-only .ui file with QUiLoader; return (application, widget)."""
    from PySide6.QtCore import QFile, QIODevice
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication

    application = QApplication.instance() or QApplication([])
    ui_device = QFile(str(ui_copy))
    assert ui_device.open(QIODevice.ReadOnly), f"cannot open {ui_copy}"
    loader = QUiLoader()
    widget = loader.load(ui_device)
    ui_device.close()
    assert widget is not None, f"QUiLoader failed: {loader.errorString()}"
    return application, widget


def render_panel(output: Path) -> Path:
    """Render the panel (all sections, Slicer widgets as stand-ins) to a PNG file."""
    import tempfile

    from PySide6.QtWidgets import QComboBox, QListWidget

    with tempfile.TemporaryDirectory() as folder:
        application, widget = load_panel(qt_loadable_copy(UI_FILE, Path(folder) / "SegMoTE.ui"))
        examples = {
            "backendModeComboBox": ["This computer", "Server"],
            "deviceComboBox": ["auto", "cpu", "cuda"],
            "inputVolumeSelector": ["CT abdomen"],
            "segmentationSelector": ["CT abdomen SegMoTE"],
            "segmentSelectorWidget": ["liver"],
            "exportFormatComboBox": ["DICOM-SEG", "NRRD (.seg.nrrd)", "NIfTI (.nii.gz)"],
        }
        for name, items in examples.items():
            widget.findChild(QComboBox, name).addItems(items)
        widget.findChild(QListWidget, "structuresListWidget").addItems(["liver", "spleen", "kidney_left", "aorta"])
        widget.findChild(QListWidget, "batchVolumesListWidget").addItems(["CT abdomen", "CT chest"])
        widget.resize(380, widget.sizeHint().height())
        widget.grab().save(str(output))
        widget.deleteLater()
        application.processEvents()
    return output


def test_module_file_compiles():
    compile(MODULE_FILE.read_text(encoding="utf-8"), str(MODULE_FILE), "exec")


def test_ui_has_every_widget_the_module_uses():
    used = module_widget_names()
    defined = ui_widgets()

    assert len(used) > 30
    missing = sorted(used - set(defined))
    assert missing == [], f"SegMoTE.py uses widgets that SegMoTE.ui lacks: {missing}"


def test_name_check_detects_missing_widget(tmp_path):
    """Negative control: a module file that refers to an unknown widget is caught."""
    module_copy = tmp_path / "SegMoTE.py"
    module_copy.write_text(MODULE_FILE.read_text(encoding="utf-8") + "\n\ndef extra(self):\n    self.ui.noSuchWidget.show()\n")

    assert "noSuchWidget" in module_widget_names(module_copy) - set(ui_widgets())


def test_parameter_names_match_parameter_node():
    bound = {}
    for name, element in ui_widgets().items():
        for prop in element.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = name

    assert set(bound) == PARAMETER_NAMES
    source = MODULE_FILE.read_text(encoding="utf-8")
    for parameter in PARAMETER_NAMES:
        assert f"    {parameter}:" in source, f"parameter {parameter} is not declared in SegMoTEParameterNode"


def module_constant(name: str):
    """Return the value of a module-level constant of SegMoTE.py (parsed, not executed)."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in SegMoTE.py")


def test_shortcuts_leave_slice_view_keys_alone():
    # Keys that Slicer 5.6 slice views handle themselves (vtkMRMLSliceIntersectionWidget).
    slice_view_keys = {"b", "f", "g", "r", "t", "v"}
    shortcuts = module_constant("SHORTCUTS")

    assert set(shortcuts.values()) == {"include point", "exclude point", "box", "clear prompts", "propagate"}
    assert not set(shortcuts) & slice_view_keys


def test_user_errors_are_translatable():
    """Every InputError raised in the module file has its message wrapped in _() for translation."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    raised = [node.exc for node in ast.walk(tree)
              if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
              and getattr(node.exc.func, "id", None) == "InputError"]

    assert len(raised) > 10
    for call in raised:
        message = call.args[0]
        while isinstance(message, ast.Call) and isinstance(message.func, ast.Attribute):  # _("...").format(...)
            message = message.func.value
        assert isinstance(message, ast.Call), ast.unparse(call)
        assert getattr(message.func, "id", None) == "_", ast.unparse(call)


def test_ui_loads_with_qt(tmp_path):
    from PySide6.QtWidgets import QWidget

    application, widget = load_panel(qt_loadable_copy(UI_FILE, tmp_path / "SegMoTE.ui"))

    names = {child.objectName() for child in widget.findChildren(QWidget)}
    missing = sorted(module_widget_names() - names)
    assert missing == [], f"widgets not created by QUiLoader: {missing}"
    widget.deleteLater()
    application.processEvents()


def test_panel_renders(tmp_path):
    from PySide6.QtGui import QImage

    image = QImage(str(render_panel(tmp_path / "panel.png")))

    assert image.width() == 380
    assert image.height() > 600
    colours = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
    assert len(colours) > 10, "the rendered panel is blank"


if __name__ == "__main__":
    print(render_panel(Path(sys.argv[1] if len(sys.argv) > 1 else "SegMoTE-panel.png")))
