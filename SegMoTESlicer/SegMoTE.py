"""SegMoTE: SAM-family segmentation in 3D Slicer, with prompts in the slice views, auto-segmentation, batch and export.

The module has the usual parts of a Slicer scripted module: module metadata, a
parameter node wrapper bound to ``Resources/UI/SegMoTE.ui``, a thin widget, a
GUI-free logic and a self-test. Geometry, prompt JSON, merging, terminology,
background jobs and the backend interface live in ``SegMoTELib``, which imports
no slicer and is tested with pytest. The backend itself is the ``segmote`` package.
Written against the Slicer 5.6 to 5.10 Python API.
"""

import enum
import logging
import os
import pathlib
import queue
import tempfile
import time
from typing import Annotated, Optional

import numpy as np
import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from segmote.errors import InputError
from segmote.geometry import lps_to_ras
from SegMoTELib import dependencies
from SegMoTELib.backends import Backend, BackendSession, InProcessBackend, RemoteBackend
from SegMoTELib.export import export_dicom_seg, export_label_map, label_table, safe_file_stem
from SegMoTELib.jobs import BackgroundJob, JobCancelled, run_batch, user_message
from SegMoTELib.merge import (
    EDITABLE_AREAS,
    KEEP_OTHER_SEGMENTS,
    OVERWRITE_MODES,
    Masking,
    changed_region,
    editable_area_mask,
    merge_into_segments,
    overwritable_ids,
)
from SegMoTELib.prompts import BACKGROUND, FOREGROUND, PromptGroup, box_corners_from_roi
from SegMoTELib.resources import find_resource
from SegMoTELib.terminology import segment_style
from SegMoTELib.viewgeometry import (
    ViewPlane,
    grid_from_ijk_to_ras,
    view_plane,
    views_containing_point,
)

logger = logging.getLogger(__name__)

SLICE_VIEW_NAMES = ("Red", "Yellow", "Green")

# Keyboard shortcuts, active while the module is shown. Slice views use b, f,
# g, r, t and v themselves (Slicer 5.6), so those keys are left to them.
SHORTCUTS = {
    "a": "include point",
    "s": "exclude point",
    "d": "box",
    "c": "clear prompts",
    "p": "propagate",
}

# How often the widget polls a running background job, in milliseconds.
JOB_POLL_INTERVAL_MS = 100

EXPORT_FORMATS = ("DICOM-SEG", "NRRD (.seg.nrrd)", "NIfTI (.nii.gz)")
EXPORT_SUFFIXES = {"DICOM-SEG": ".dcm", "NRRD (.seg.nrrd)": ".seg.nrrd", "NIfTI (.nii.gz)": ".nii.gz"}


#
# SegMoTE
#


class SegMoTE(ScriptedLoadableModule):
    """Module metadata."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SegMoTE")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SegMoTE developers"]
        self.parent.helpText = _(
            "Segment medical images with SAM-family models (LiteMedSAM by default): place include/exclude "
            "points or a box in the Red, Yellow or Green view, propagate through the volume, auto-segment "
            "known structures, run batches and export DICOM-SEG. The model runs on this computer (PyTorch) "
            "or on a SegMoTE server."
        )
        self.parent.acknowledgementText = _(
            "SegMoTE uses LiteMedSAM and Segment Anything; see the project's README for their licences."
        )
        # In a source checkout the icon is outside the module folder, where Slicer does not look.
        try:
            self.parent.icon = qt.QIcon(find_resource(__file__, "Icons/SegMoTE.png"))
        except InputError as error:
            logger.warning("%s", error)


#
# SegMoTEParameterNode
#


class BackendMode(enum.Enum):
    """Backend mode: the model runs in this Slicer or on a SegMoTE server."""

    LOCAL = "local"
    SERVER = "server"

    def label(self) -> str:
        """Text shown in the backend combo box."""
        return _("This computer") if self is BackendMode.LOCAL else _("Server")


@parameterNodeWrapper
class SegMoTEParameterNode:
    """The module's settings, saved with the scene.

    The server token is left out on purpose, because a scene file must not contain secrets.
    """

    backendMode: BackendMode = BackendMode.LOCAL
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    serverUrl: str = "http://127.0.0.1:8765"
    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    propagateLimit: Annotated[int, WithinRange(0, 1000)] = 0
    followEditorMasking: bool = False
    exportFormat: Annotated[str, Choice(list(EXPORT_FORMATS))] = "DICOM-SEG"
    exportFolder: pathlib.Path = pathlib.Path.home()
    addToDicomDatabase: bool = True


#
# SegMoTEWidget
#


class SegMoTEWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel, which forwards user actions to the logic and shows progress and results."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[SegMoTELogic] = None
        self._parameterNode: Optional[SegMoTEParameterNode] = None
        self._parameterNodeGuiTag = None
        self._promptGroup: Optional[PromptGroup] = None
        self._groupBase: Optional[np.ndarray] = None
        self._markups: dict = {}
        self._placingViewName: dict = {}
        self._shortcuts: list = []
        self._job: Optional[BackgroundJob] = None
        self._jobFinished = None
        self._jobOnPoll = None
        self._batchResults: queue.Queue = queue.Queue()
        self._jobTimer = qt.QTimer()
        self._jobTimer.setInterval(JOB_POLL_INTERVAL_MS)
        self._jobTimer.timeout.connect(self._pollJob)

    # Setup and life cycle

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(find_resource(__file__, "UI/SegMoTE.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SegMoTELogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # Backend
        self.ui.backendModeComboBox.connect("currentIndexChanged(int)", self._updateBackendWidgets)
        self.ui.installDependenciesButton.clicked.connect(self.onInstallDependencies)
        self.ui.testConnectionButton.clicked.connect(self.onTestConnection)

        # Inputs
        self.ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._onSegmentationChanged)
        self.ui.addSegmentButton.clicked.connect(self.onAddSegment)

        # Prompts
        self.ui.positivePointButton.toggled.connect(lambda on: self._setPlacing("positive", on))
        self.ui.negativePointButton.toggled.connect(lambda on: self._setPlacing("negative", on))
        self.ui.boxButton.toggled.connect(lambda on: self._setPlacing("box", on))
        self.ui.clearPromptsButton.clicked.connect(self.onClearPrompts)
        self.ui.undoButton.clicked.connect(self.onUndo)
        self.ui.propagateButton.clicked.connect(self.onPropagate)

        # Auto-segment, batch, export, jobs
        self.ui.refreshStructuresButton.clicked.connect(self.onRefreshStructures)
        self.ui.autoSegmentButton.clicked.connect(self.onAutoSegment)
        self.ui.refreshBatchButton.clicked.connect(self.onRefreshBatchVolumes)
        self.ui.batchRunButton.clicked.connect(self.onRunBatch)
        self.ui.exportButton.clicked.connect(self.onExport)
        self.ui.cancelJobButton.clicked.connect(self.onCancelJob)

        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        self.addObserver(interactionNode, interactionNode.InteractionModeChangedEvent, self._onInteractionModeChanged)

        self._createShortcuts()
        self.initializeParameterNode()
        self._updateBackendWidgets()
        self._updateDependencyStatus()

    def cleanup(self) -> None:
        self._jobTimer.stop()
        if self._job is not None:
            self._job.cancel()
        self._removeShortcuts()
        self.removeObservers()
        self.logic.closeSession()

    def enter(self) -> None:
        self.initializeParameterNode()
        for shortcut in self._shortcuts:
            shortcut.setEnabled(True)
        self.onRefreshBatchVolumes()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        for shortcut in self._shortcuts:
            shortcut.setEnabled(False)
        self._stopPlacing()

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self._promptGroup = None
        self._markups = {}
        self.logic.closeSession()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume:
                self._parameterNode.inputVolume = firstVolume

    def setParameterNode(self, inputParameterNode: Optional[SegMoTEParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self._onSegmentationChanged(self._parameterNode.segmentation)

    # Backend

    def _updateBackendWidgets(self, *args) -> None:
        local = self.ui.backendModeComboBox.currentIndex == 0
        self.ui.localBackendWidget.setVisible(local)
        self.ui.serverBackendWidget.setVisible(not local)
        self.logic.resetBackend()

    def _updateDependencyStatus(self) -> None:
        missing = self.logic.missingLocalRequirements()
        if missing:
            self.ui.dependencyStatusLabel.text = _("missing: {packages}").format(packages=", ".join(missing))
        else:
            self.ui.dependencyStatusLabel.text = _("all installed")
        self.ui.installDependenciesButton.enabled = bool(missing)

    def onInstallDependencies(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to install the required packages."), waitCursor=False):
            installDependenciesWithConsent()
        self._updateDependencyStatus()

    def _backend(self) -> Backend:
        mode = self._parameterNode.backendMode
        if mode is BackendMode.LOCAL and self.logic.missingLocalRequirements():
            if not installDependenciesWithConsent():
                raise InputError(_("the model cannot run on this computer without the required packages: install them or use a server"))
            self._updateDependencyStatus()
        return self.logic.backend(mode, self._parameterNode.device, self._parameterNode.serverUrl, self.ui.serverTokenLineEdit.text)

    def onTestConnection(self) -> None:
        self.ui.connectionStatusLabel.text = _("connecting...")
        slicer.app.processEvents()
        try:
            with slicer.util.tryWithErrorDisplay(_("Connection test failed."), waitCursor=True):
                info = self._backend().info()
                self.ui.connectionStatusLabel.text = info.text()
                self.onRefreshStructures()
        except Exception as error:
            self.ui.connectionStatusLabel.text = _("failed: {message}").format(message=user_message(error))

    # Inputs

    def _onSegmentationChanged(self, node) -> None:
        self.ui.segmentSelectorWidget.setCurrentNode(node)
        self._promptGroup = None

    def onAddSegment(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to add a segment."), waitCursor=True):
            segmentationNode = self._segmentationForPrompts()
            segmentId = segmentationNode.GetSegmentation().AddEmptySegment()
            self.ui.segmentSelectorWidget.setCurrentSegmentID(segmentId)

    def _segmentationForPrompts(self):
        """Return the selected segmentation, creating one for the input volume when none is selected."""
        volumeNode = self._parameterNode.inputVolume
        if not volumeNode:
            raise InputError(_("select an input volume first"))
        if not self._parameterNode.segmentation:
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", volumeNode.GetName() + " SegMoTE")
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            self._parameterNode.segmentation = segmentationNode
        return self._parameterNode.segmentation

    def _selectedSegmentId(self, segmentationNode) -> str:
        segmentId = self.ui.segmentSelectorWidget.currentSegmentID()
        if not segmentId:
            segmentId = segmentationNode.GetSegmentation().AddEmptySegment()
            self.ui.segmentSelectorWidget.setCurrentSegmentID(segmentId)
        return segmentId

    # Prompt placement

    def _createShortcuts(self) -> None:
        actions = {
            "include point": lambda: self.ui.positivePointButton.setChecked(True),
            "exclude point": lambda: self.ui.negativePointButton.setChecked(True),
            "box": lambda: self.ui.boxButton.setChecked(True),
            "clear prompts": self.onClearPrompts,
            "propagate": self.onPropagate,
        }
        mainWindow = slicer.util.mainWindow()
        if mainWindow is None:  # Slicer started with --no-main-window (for example ctest)
            return
        for key, actionName in SHORTCUTS.items():
            action = actions[actionName]
            shortcut = qt.QShortcut(qt.QKeySequence(key), mainWindow)
            shortcut.activated.connect(action)
            shortcut.setEnabled(False)
            self._shortcuts.append(shortcut)

    def _removeShortcuts(self) -> None:
        for shortcut in self._shortcuts:
            shortcut.activated.disconnect()
            shortcut.setParent(None)
        self._shortcuts = []

    def _markupsNode(self, kind: str):
        """Return the markups node for ``positive``, ``negative`` or ``box`` prompts, creating it on first use."""
        node = self._markups.get(kind)
        if node is not None and slicer.mrmlScene.IsNodePresent(node):
            return node
        className = "vtkMRMLMarkupsROINode" if kind == "box" else "vtkMRMLMarkupsFiducialNode"
        node = slicer.mrmlScene.AddNewNodeByClass(className, f"SegMoTE {kind}")
        node.CreateDefaultDisplayNodes()
        node.SetHideFromEditors(False)
        display = node.GetDisplayNode()
        colors = {"positive": (0.2, 0.9, 0.2), "negative": (0.95, 0.25, 0.2), "box": (1.0, 0.85, 0.1)}
        display.SetSelectedColor(*colors[kind])
        display.SetColor(*colors[kind])
        if kind != "box":
            display.SetPointLabelsVisibility(False)
        self.addObserver(node, node.PointModifiedEvent, self._onMarkupsModified)
        self.addObserver(node, node.PointPositionDefinedEvent, self._onPromptPlaced)
        if kind == "box":
            self.addObserver(node, node.PointEndInteractionEvent, self._onPromptPlaced)
        self._markups[kind] = node
        return node

    def _setPlacing(self, kind: str, on: bool) -> None:
        buttons = {"positive": self.ui.positivePointButton, "negative": self.ui.negativePointButton, "box": self.ui.boxButton}
        if not on:
            if not any(button.checked for button in buttons.values()):
                self._stopPlacing()
            return
        for other, button in buttons.items():
            if other != kind:
                button.blockSignals(True)
                button.checked = False
                button.blockSignals(False)
        node = self._markupsNode(kind)
        if kind == "box":
            node.RemoveAllControlPoints()
        slicer.modules.markups.logic().SetActiveList(node)
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        interactionNode.SetPlaceModePersistence(0 if kind == "box" else 1)
        interactionNode.SetCurrentInteractionMode(interactionNode.Place)

    def _onInteractionModeChanged(self, caller, event) -> None:
        # Placing ends when a box is finished or another tool takes over: release the prompt buttons.
        if caller.GetCurrentInteractionMode() != caller.Place:
            for button in (self.ui.positivePointButton, self.ui.negativePointButton, self.ui.boxButton):
                button.blockSignals(True)
                button.checked = False
                button.blockSignals(False)

    def _stopPlacing(self) -> None:
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        interactionNode.SetCurrentInteractionMode(interactionNode.ViewTransform)

    def _onMarkupsModified(self, caller, event) -> None:
        # While a point is previewed under the mouse, Slicer records the view's layout name.
        viewName = caller.GetAttribute("Markups.MovingInSliceView")
        if viewName:
            self._placingViewName[caller.GetID()] = viewName

    def _viewOfPoint(self, node, pointRas) -> str:
        """Return the name of the slice view a prompt was placed in."""
        recorded = self._placingViewName.get(node.GetID())
        volumeNode = self._parameterNode.inputVolume
        tolerance = 0.5 * min(volumeNode.GetSpacing())
        sliceToRas = {name: sliceToRasArray(name) for name in SLICE_VIEW_NAMES if slicer.app.layoutManager().sliceWidget(name)}
        candidates = views_containing_point(sliceToRas, pointRas, tolerance)
        if recorded in sliceToRas:
            return recorded
        if len(candidates) == 1:
            return candidates[0]
        raise InputError(_("place the prompt in the Red, Yellow or Green slice view"))

    def _onPromptPlaced(self, caller, event) -> None:
        with slicer.util.tryWithErrorDisplay(_("Segmentation from the prompt failed."), waitCursor=True):
            kind = next(name for name, node in self._markups.items() if node.GetID() == caller.GetID())
            if kind == "box":
                if caller.GetNumberOfControlPoints() == 0 or min(sorted(caller.GetSize())[1:]) <= 0:
                    return  # still being drawn
                pointRas = [0.0, 0.0, 0.0]
                caller.GetCenterWorld(pointRas)
                matrix = slicer.util.arrayFromVTKMatrix(caller.GetObjectToWorldMatrix())
                corners = box_corners_from_roi(pointRas, caller.GetSize(), matrix[:3, :3])
            else:
                pointRas = [0.0, 0.0, 0.0]
                caller.GetNthControlPointPositionWorld(caller.GetNumberOfControlPoints() - 1, pointRas)
            viewName = self._viewOfPoint(caller, pointRas)
            group = self._groupFor(viewName)
            if kind == "box":
                group.set_box(*corners)
            else:
                group.add_point(pointRas, FOREGROUND if kind == "positive" else BACKGROUND)
            self._runPromptGroup(group)

    def _groupFor(self, viewName: str) -> PromptGroup:
        """Return the prompt group for the current segment and slice, starting a new one (and an undo point) when either changed."""
        volumeNode = self._parameterNode.inputVolume
        segmentationNode = self._segmentationForPrompts()
        segmentId = self._selectedSegmentId(segmentationNode)
        plane = self.logic.planeForView(sliceToRasArray(viewName), volumeNode)
        name = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
        if self._promptGroup is None or not self._promptGroup.matches(name, plane):
            # A new group adds to the segment: what it held before stays, and the group's own
            # prompts (include and exclude) shape only what the group adds.
            self.logic.saveUndoState(segmentationNode, volumeNode)
            self._groupBase = self.logic.segmentMask(volumeNode, segmentationNode, segmentId)
            self._promptGroup = PromptGroup(name, plane)
        return self._promptGroup

    def _runPromptGroup(self, group: PromptGroup) -> None:
        if not group.is_ready:
            self.ui.promptStatusLabel.text = _("add an include point or a box")
            return
        segmentationNode = self._segmentationForPrompts()
        segmentId = self._selectedSegmentId(segmentationNode)
        voxels = self.logic.segmentWithPrompts(
            self._backend(), self._parameterNode.inputVolume, segmentationNode, segmentId, group,
            followEditorMasking=self._parameterNode.followEditorMasking, keep=self._groupBase,
        )
        self.ui.promptStatusLabel.text = _("{count} prompts on {view} slice {index}: {voxels} voxels").format(
            count=len(group.points_ras) + (group.box_ras is not None), view=group.plane.view,
            index=group.plane.slice_index, voxels=voxels)

    def onClearPrompts(self) -> None:
        for node in self._markups.values():
            if slicer.mrmlScene.IsNodePresent(node):
                node.RemoveAllControlPoints()
        self._promptGroup = None
        self.ui.promptStatusLabel.text = _("none")

    def onUndo(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Undo failed."), waitCursor=True):
            self.logic.undo()
        self._promptGroup = None

    def onPropagate(self) -> None:
        if self._promptGroup is None or not self._promptGroup.is_ready:
            slicer.util.warningDisplay(_("Place an include point or a box on the slice to propagate from."))
            return
        with slicer.util.tryWithErrorDisplay(_("Propagation failed."), waitCursor=True):
            backend = self._backend()
            volumeNode = self._parameterNode.inputVolume
            segmentationNode = self._segmentationForPrompts()
            segmentId = self._selectedSegmentId(segmentationNode)
            group = self._promptGroup
            limit = self._parameterNode.propagateLimit or None
            followMasking = self._parameterNode.followEditorMasking
            session = self.logic.session(backend, volumeNode)
            prompts = group.to_prompts(self.logic.grid(volumeNode), propagate=True, propagate_limit=limit)

            def work(progress, cancel):
                progress(0.0, _("propagating"))
                return session.segment(prompts)

            def finished(mask):
                self.logic.saveUndoState(segmentationNode, volumeNode)  # propagation is an undo step of its own
                before = self.logic.segmentMask(volumeNode, segmentationNode, segmentId)
                self.logic.applyPromptResult(volumeNode, segmentationNode, segmentId, group.plane, mask, True, followMasking, before)
                self.ui.promptStatusLabel.text = _("propagated through {count} slices").format(
                    count=int(np.count_nonzero(mask.any(axis=tuple(a for a in range(3) if a != group.plane.numpy_axis)))))

            self._startJob(BackgroundJob(work, "SegMoTE propagation"), finished, busy=True)

    # Auto-segment

    def onRefreshStructures(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to list the structures."), waitCursor=True):
            checked = set(self._checkedItems(self.ui.structuresListWidget))
            self.ui.structuresListWidget.clear()
            for name in self._backend().structures():
                item = qt.QListWidgetItem(name)
                item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
                item.setCheckState(qt.Qt.Checked if name in checked else qt.Qt.Unchecked)
                self.ui.structuresListWidget.addItem(item)

    @staticmethod
    def _checkedItems(listWidget) -> list:
        return [listWidget.item(row).text() for row in range(listWidget.count) if listWidget.item(row).checkState() == qt.Qt.Checked]

    def _checkedStructures(self) -> list:
        structures = self._checkedItems(self.ui.structuresListWidget)
        if not structures:
            raise InputError(_("check at least one structure in the Auto-segment list (press Refresh list first)"))
        return structures

    def onAutoSegment(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Auto-segmentation failed."), waitCursor=True):
            volumeNode = self._parameterNode.inputVolume
            if not volumeNode:
                raise InputError(_("select an input volume first"))
            structures = self._checkedStructures()
            session = self.logic.session(self._backend(), volumeNode)

            def work(progress, cancel):
                return session.auto(structures, progress, cancel)

            def finished(labels):
                segmentationNode = self.logic.addLabelsAsSegmentation(volumeNode, labels, structures)
                self._parameterNode.segmentation = segmentationNode
                self.ui.jobStatusLabel.text = _("auto-segmented {count} structures").format(count=len(structures))

            self._startJob(BackgroundJob(work, "SegMoTE auto-segmentation"), finished)

    # Batch

    def onRefreshBatchVolumes(self) -> None:
        checked = set(self._checkedItems(self.ui.batchVolumesListWidget))
        self.ui.batchVolumesListWidget.clear()
        for volumeNode in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            if volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                continue
            item = qt.QListWidgetItem(volumeNode.GetName())
            item.setData(qt.Qt.UserRole, volumeNode.GetID())
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Checked if volumeNode.GetName() in checked else qt.Qt.Unchecked)
            self.ui.batchVolumesListWidget.addItem(item)

    def onRunBatch(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Batch run failed."), waitCursor=True):
            listWidget = self.ui.batchVolumesListWidget
            volumeIds = [listWidget.item(row).data(qt.Qt.UserRole) for row in range(listWidget.count)
                         if listWidget.item(row).checkState() == qt.Qt.Checked]
            volumeNodes = [slicer.mrmlScene.GetNodeByID(volumeId) for volumeId in volumeIds]
            volumeNodes = [node for node in volumeNodes if node is not None]
            if not volumeNodes:
                raise InputError(_("check at least one volume in the Batch list"))
            structures = self._checkedStructures()
            backend = self._backend()
            job = self.logic.batchJob(backend, volumeNodes, structures, self._batchResults)

            def finished(summary):
                self._drainBatchResults(structures)
                self.ui.batchSummaryTextEdit.setPlainText(summary.text())

            self.ui.batchSummaryTextEdit.setPlainText("")
            self._startJob(job, finished, onPoll=lambda: self._drainBatchResults(structures))

    def _drainBatchResults(self, structures) -> None:
        """Turn finished batch volumes into segmentations (on the main thread, as Slicer requires)."""
        while not self._batchResults.empty():
            volumeNode, labels = self._batchResults.get_nowait()
            self.logic.addLabelsAsSegmentation(volumeNode, labels, structures)

    # Export

    def onExport(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            volumeNode = self._parameterNode.inputVolume
            segmentationNode = self._parameterNode.segmentation
            if not volumeNode or not segmentationNode:
                raise InputError(_("select the input volume and the segmentation to export"))
            if self._parameterNode.exportFormat == "DICOM-SEG":
                if not installDependenciesWithConsent(dependencies.SERVER_REQUIREMENTS, needsTorch=False):
                    raise InputError(_("DICOM-SEG export needs pydicom and highdicom: install them or choose NRRD or NIfTI"))
            path = self.logic.export(
                volumeNode, segmentationNode, self._parameterNode.exportFormat,
                pathlib.Path(self._parameterNode.exportFolder), self._parameterNode.addToDicomDatabase,
            )
            self.ui.exportStatusLabel.text = str(path)

    # Background jobs

    def _startJob(self, job: BackgroundJob, onFinished, busy: bool = False, onPoll=None) -> None:
        if self._job is not None:
            raise InputError(_("another task is running: wait for it or cancel it"))
        self._job = job
        self._jobFinished = onFinished
        self._jobOnPoll = onPoll
        self.ui.jobProgressBar.setRange(0, 0 if busy else 100)
        self.ui.jobProgressBar.value = 0
        self.ui.cancelJobButton.enabled = True
        self._setToolsEnabled(False)
        job.start()
        self._jobTimer.start()

    def _pollJob(self) -> None:
        if self._job is None:
            self._jobTimer.stop()
            return
        state = self._job.state()
        if self.ui.jobProgressBar.maximum > 0:
            self.ui.jobProgressBar.value = int(round(100 * state.fraction))
        self.ui.jobStatusLabel.text = state.message
        if self._jobOnPoll is not None:
            self._jobOnPoll()
        if state.running:
            return

        # The job ended: show its result or error on the main thread.
        self._jobTimer.stop()
        onFinished = self._jobFinished
        self._job = None
        self.ui.jobProgressBar.setRange(0, 100)
        self.ui.jobProgressBar.value = 100 if state.error is None else 0
        self.ui.cancelJobButton.enabled = False
        self._setToolsEnabled(True)
        if isinstance(state.error, JobCancelled):
            self.ui.jobStatusLabel.text = _("cancelled")
        elif state.error is not None:
            self.ui.jobStatusLabel.text = _("failed: {message}").format(message=user_message(state.error))
            slicer.util.errorDisplay(user_message(state.error))
        else:
            with slicer.util.tryWithErrorDisplay(_("Failed to show the result."), waitCursor=True):
                onFinished(state.result)

    def onCancelJob(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.ui.jobStatusLabel.text = _("cancelling...")

    def _setToolsEnabled(self, enabled: bool) -> None:
        for widget in (self.ui.promptsCollapsibleButton, self.ui.autoSegmentButton, self.ui.batchRunButton,
                       self.ui.exportButton, self.ui.testConnectionButton, self.ui.backendModeComboBox):
            widget.enabled = enabled


def sliceToRasArray(viewName: str) -> np.ndarray:
    """Return the 4 x 4 SliceToRAS matrix of a slice view as numpy."""
    sliceNode = slicer.app.layoutManager().sliceWidget(viewName).mrmlSliceNode()
    return slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())


def installDependenciesWithConsent(requirements=dependencies.ENGINE_REQUIREMENTS, needsTorch: bool = True) -> bool:
    """Install missing packages (and torch when ``needsTorch``) after the user agrees; return whether all are installed.

    Torch comes from the PyTorch extension's installer, which picks the build
    for this computer's GPU driver. Nothing is installed without a confirmation.
    """
    missing = dependencies.missing_requirements(requirements)
    torchMissing = needsTorch and dependencies.torch_missing()
    if not missing and not torchMissing:
        return True

    packages = (["torch" + dependencies.TORCH_REQUIREMENT] if torchMissing else []) + missing
    question = _("SegMoTE needs these Python packages in Slicer:\n\n{packages}\n\nDownload and install them now?").format(
        packages="\n".join(packages))
    if torchMissing:
        question += "\n" + _("PyTorch is a download of several GB and takes several minutes to install.")
    if not slicer.util.confirmOkCancelDisplay(question, windowTitle=_("SegMoTE: install packages")):
        return False

    if torchMissing:
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            PyTorchUtils = None
        if PyTorchUtils is not None:
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=dependencies.TORCH_REQUIREMENT) is None:
                return False
        else:
            # Without the PyTorch extension, pip picks PyPI's default torch build (CUDA on Linux, CPU elsewhere).
            missing = ["torch" + dependencies.TORCH_REQUIREMENT] + missing

    if missing:
        try:
            import slicer.packaging as packaging  # Slicer after 5.10: pip_ensure has its own progress dialog
        except ImportError:
            packaging = None
        if packaging is not None:
            packaging.pip_ensure(missing, prompt_install=False, requester="SegMoTE", show_progress=True)
        else:
            progressDialog = slicer.util.createProgressDialog(labelText=_("Installing {packages}...").format(packages=", ".join(missing)), maximum=0)
            slicer.app.processEvents()
            try:
                slicer.util.pip_install(missing)
            finally:
                progressDialog.close()
    return not dependencies.missing_requirements(requirements) and not (needsTorch and dependencies.torch_missing())


#
# SegMoTELogic
#


class SegMoTELogic(ScriptedLoadableModuleLogic):
    """Everything the module does, without dialogs or widgets, so scripts and the self-test can call it.

    Holds the current backend and one open session (the last volume used);
    a new volume or a changed voxel array opens a new session.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._backend: Optional[Backend] = None
        self._backendKey = None
        self._session: Optional[BackendSession] = None
        self._sessionKey = None

    def getParameterNode(self) -> SegMoTEParameterNode:
        return SegMoTEParameterNode(super().getParameterNode())

    # Backend and sessions

    @staticmethod
    def missingLocalRequirements() -> list:
        """Return the packages "This computer" mode still needs (torch included)."""
        missing = dependencies.missing_requirements(dependencies.ENGINE_REQUIREMENTS)
        return (["torch"] if dependencies.torch_missing() else []) + missing

    def backend(self, mode: BackendMode, device: str = "auto", serverUrl: str = "", token: str = "") -> Backend:
        """Return the backend for the settings, reusing the last one when they did not change."""
        key = (mode, device) if mode is BackendMode.LOCAL else (mode, serverUrl, token)
        if self._backend is None or key != self._backendKey:
            self.closeSession()
            self._backend = InProcessBackend(device=device) if mode is BackendMode.LOCAL else RemoteBackend(serverUrl, token or None)
            self._backendKey = key
        return self._backend

    def resetBackend(self) -> None:
        """Forget the backend (after the mode changed)."""
        self.closeSession()
        self._backend = None
        self._backendKey = None

    @staticmethod
    def grid(volumeNode):
        """Return the LPS grid of a volume node."""
        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        dimensions = volumeNode.GetImageData().GetDimensions()  # (I, J, K)
        return grid_from_ijk_to_ras(slicer.util.arrayFromVTKMatrix(ijkToRas), (dimensions[2], dimensions[1], dimensions[0]))

    @staticmethod
    def modality(volumeNode) -> Optional[str]:
        """Return the DICOM modality of a volume loaded from DICOM, else None."""
        instanceUids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        if not instanceUids or not slicer.dicomDatabase:
            return None
        return slicer.dicomDatabase.instanceValue(instanceUids[0], "0008,0060") or None

    def session(self, backend: Backend, volumeNode) -> BackendSession:
        """Return an open session on ``volumeNode``; the voxel array is sent once per change."""
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise InputError(_("select an input volume with image data"))
        if volumeNode.GetParentTransformNode() is not None:
            raise InputError(_("the input volume is under a transform: harden the transform first (Data module)"))
        key = (id(backend), volumeNode.GetID(), volumeNode.GetImageData().GetMTime())
        if self._session is None or key != self._sessionKey:
            self.closeSession()
            startSeconds = time.monotonic()
            array = slicer.util.arrayFromVolume(volumeNode).copy()  # (K, J, I)
            self._session = backend.open_session(array, self.grid(volumeNode), self.modality(volumeNode))
            self._sessionKey = key
            logger.info("Opened a SegMoTE session on %s in %.1f s", volumeNode.GetName(), time.monotonic() - startSeconds)
        return self._session

    def closeSession(self) -> None:
        """Close the open session, if any."""
        if self._session is not None:
            try:
                self._session.close()
            except Exception as error:  # the server may be gone; the session is dropped anyway
                logger.warning("Closing the SegMoTE session failed: %s", user_message(error))
        self._session = None
        self._sessionKey = None

    # Prompts

    def planeForView(self, sliceToRas: np.ndarray, volumeNode) -> ViewPlane:
        """Return the voxel slice a slice view shows (raises for views oblique to the volume)."""
        return view_plane(sliceToRas, self.grid(volumeNode))

    @staticmethod
    def segmentEditorWidget():
        """Return the Segment Editor module's editor widget, which stores the undo history and masking settings."""
        return slicer.util.getModuleWidget("SegmentEditor").editor

    def saveUndoState(self, segmentationNode, volumeNode) -> None:
        """Start an undo step in the Segment Editor for the next prompt group."""
        editor = self.segmentEditorWidget()
        current = editor.segmentationNode()
        if current is None or current.GetID() != segmentationNode.GetID():
            editor.setSegmentationNode(segmentationNode)
            editor.setSourceVolumeNode(volumeNode)
        editor.saveStateForUndo()

    def undo(self) -> None:
        """Undo the last prompt group (or any other Segment Editor step)."""
        self.segmentEditorWidget().undo()

    def editorMasking(self) -> Masking:
        """Return the Segment Editor's masking settings."""
        editorNode = self.segmentEditorWidget().mrmlSegmentEditorNode()
        intensityRange = None
        if editorNode.GetSourceVolumeIntensityMask():
            intensityRange = tuple(editorNode.GetSourceVolumeIntensityMaskRange())
        return Masking(
            editable_area=EDITABLE_AREAS[editorNode.GetMaskMode()],
            overwrite=OVERWRITE_MODES[editorNode.GetOverwriteMode()],
            mask_segment_id=editorNode.GetMaskSegmentID() or None,
            intensity_range=intensityRange,
        )

    def segmentWithPrompts(self, backend: Backend, volumeNode, segmentationNode, segmentId: str, group: PromptGroup,
                           propagate: bool = False, propagateLimit: Optional[int] = None, followEditorMasking: bool = False,
                           keep: Optional[np.ndarray] = None) -> int:
        """Run a prompt group and merge the result into the segment; return the segment's voxel count on the changed region.

        ``keep`` is a boolean mask ``(K, J, I)`` of segment voxels that stay whatever
        the result, normally the segment before the prompt group started.
        """
        startSeconds = time.monotonic()
        session = self.session(backend, volumeNode)
        prompts = group.to_prompts(self.grid(volumeNode), propagate=propagate, propagate_limit=propagateLimit)
        mask = session.segment(prompts)
        voxels = self.applyPromptResult(volumeNode, segmentationNode, segmentId, group.plane, mask, propagate, followEditorMasking, keep)
        logger.info("Prompt on %s slice %d done in %.2f s", group.plane.view, group.plane.slice_index, time.monotonic() - startSeconds)
        return voxels

    def segmentMask(self, volumeNode, segmentationNode, segmentId: str) -> np.ndarray:
        """Return a segment as a boolean mask ``(K, J, I)`` on the volume's grid."""
        return slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode) > 0

    def applyPromptResult(self, volumeNode, segmentationNode, segmentId: str, plane: ViewPlane, mask: np.ndarray,
                          propagate: bool, followEditorMasking: bool, keep: Optional[np.ndarray] = None) -> int:
        """Merge a result mask ``(K, J, I)`` into one segment; other segments change only when the masking allows it."""
        segmentation = segmentationNode.GetSegmentation()
        segmentIds = list(segmentation.GetSegmentIDs())
        arrays = {otherId: self.segmentMask(volumeNode, segmentationNode, otherId) for otherId in segmentIds}
        region = changed_region(mask.shape, plane, mask, propagate)

        masking = self.editorMasking() if followEditorMasking else KEEP_OTHER_SEGMENTS
        displayNode = segmentationNode.GetDisplayNode()
        visibleIds = [otherId for otherId in segmentIds if displayNode is None or displayNode.GetSegmentVisibility(otherId)]
        sourceArray = slicer.util.arrayFromVolume(volumeNode) if masking.intensity_range is not None else None
        editable = editable_area_mask(masking, arrays, visibleIds, segmentId, sourceArray)
        overwrite = overwritable_ids(masking, segmentIds, visibleIds, segmentId)

        others = {otherId: array for otherId, array in arrays.items() if otherId != segmentId}
        update = merge_into_segments(arrays[segmentId], others, mask, region, overwrite, editable, keep)
        slicer.util.updateSegmentBinaryLabelmapFromArray(update.target.astype(np.uint8), segmentationNode, segmentId, volumeNode)
        for otherId, array in update.changed_others.items():
            slicer.util.updateSegmentBinaryLabelmapFromArray(array.astype(np.uint8), segmentationNode, otherId, volumeNode)
        return int(np.count_nonzero(update.target & region))

    # Auto-segmentation and batch

    def addLabelsAsSegmentation(self, volumeNode, labels: np.ndarray, structures: list):
        """Create a segmentation for ``volumeNode`` with one segment per structure (label k = k-th structure)."""
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", volumeNode.GetName() + " auto")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation = segmentationNode.GetSegmentation()
        for value, structure in enumerate(structures, start=1):
            style = segment_style(structure)
            segmentId = segmentation.AddEmptySegment(structure, style.name, style.color_rgb)
            segment = segmentation.GetSegment(segmentId)
            segment.SetTag(segment.GetTerminologyEntryTagName(), style.terminology)
            slicer.util.updateSegmentBinaryLabelmapFromArray((labels == value).astype(np.uint8), segmentationNode, segmentId, volumeNode)
        return segmentationNode

    def batchJob(self, backend: Backend, volumeNodes: list, structures: list, results: queue.Queue) -> BackgroundJob:
        """Return a job that auto-segments each volume; each finished label map goes to ``results`` as (volume node, labels)."""
        items = [(slicer.util.arrayFromVolume(node).copy(), self.grid(node), self.modality(node)) for node in volumeNodes]
        names = [node.GetName() for node in volumeNodes]

        def runOne(item, progress, cancel):
            array, grid, modality = item
            session = backend.open_session(array, grid, modality)
            try:
                return session.auto(structures, progress, cancel)
            finally:
                session.close()

        def work(progress, cancel):
            return run_batch(items, names, runOne, progress, cancel,
                             on_done=lambda index, labels: results.put((volumeNodes[index], labels)))

        return BackgroundJob(work, "SegMoTE batch")

    # Export

    @staticmethod
    def dicomSourceFiles(volumeNode) -> list:
        """Return the DICOM files a volume was loaded from (empty when not from Slicer's DICOM database)."""
        instanceUids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        if not instanceUids or not slicer.dicomDatabase:
            return []
        files = [slicer.dicomDatabase.fileForInstance(uid) for uid in instanceUids]
        return [pathlib.Path(path) for path in files if path]

    @staticmethod
    def labelMap(volumeNode, segmentationNode):
        """Return (labels (K, J, I) uint8 on the volume's grid, segment names); a later segment wins where segments overlap."""
        segmentation = segmentationNode.GetSegmentation()
        names, labels = [], None
        for value, segmentId in enumerate(segmentation.GetSegmentIDs(), start=1):
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode) > 0
            labels = np.zeros(mask.shape, dtype=np.uint8) if labels is None else labels
            labels[mask] = value
            names.append(segmentation.GetSegment(segmentId).GetName())
        if labels is None:
            raise InputError(_("the segmentation has no segments to export"))
        return labels, names

    def export(self, volumeNode, segmentationNode, exportFormat: str, folder: pathlib.Path, addToDicomDatabase: bool) -> pathlib.Path:
        """Export the segmentation; return the written file."""
        if not folder.is_dir():
            raise InputError(_("export folder not found: {folder}").format(folder=folder))
        labels, names = self.labelMap(volumeNode, segmentationNode)
        table = label_table(names)
        path = folder / (safe_file_stem(segmentationNode.GetName()) + EXPORT_SUFFIXES[exportFormat])
        if exportFormat == "DICOM-SEG":
            sourceFiles = self.dicomSourceFiles(volumeNode)
            if not sourceFiles:
                raise InputError(_("DICOM-SEG needs a volume loaded from the DICOM database: choose NRRD or NIfTI"))
            export_dicom_seg(labels, self.grid(volumeNode), table, sourceFiles, path)
            if addToDicomDatabase:
                import ctk

                ctk.ctkDICOMIndexer().addFile(slicer.dicomDatabase, str(path), True)
        else:
            colors = {}
            for value, segmentId in enumerate(segmentationNode.GetSegmentation().GetSegmentIDs(), start=1):
                color = segmentationNode.GetSegmentation().GetSegment(segmentId).GetColor()
                colors[value] = tuple(int(round(255 * channel)) for channel in color)
            export_label_map(labels, self.grid(volumeNode), path, table, colors)
        logger.info("Exported %s to %s", segmentationNode.GetName(), path)
        return path


#
# SegMoTETest
#


class SegMoTETest(ScriptedLoadableModuleTest):
    """Self-test on the real abdominal CT series: box prompt, auto-segmentation, DICOM-SEG export and reload.

    Needs the test data folder (``shared/data`` beside the repository, or the
    folder in the environment variable ``SEGMOTE_TEST_DATA``) and a backend:
    torch in Slicer's Python, or a server URL in ``SEGMOTE_TEST_SERVER``.
    """

    # Minimum Dice of the box result against the reference liver on the prompt slice. Outside
    # Slicer, the same backend code reached 0.981 on slice 10 of this series (LiteMedSAM, no
    # adapters, CPU, box 3 voxels larger than the liver).
    # NOTE: not yet measured inside Slicer, where the slice order of the loaded series may differ.
    MINIMUM_BOX_DICE = 0.90
    PROMPT_SLICE_K = 10
    LIVER_LABEL = 5  # TotalSegmentator "total" table

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegMoTEPipeline()

    def _dataFolder(self) -> pathlib.Path:
        candidates = [os.environ.get("SEGMOTE_TEST_DATA", "")]
        moduleFolder = pathlib.Path(__file__).resolve().parent
        candidates += [str(moduleFolder.parent.parent / "shared" / "data")]
        for candidate in candidates:
            if candidate and (pathlib.Path(candidate) / "ct_abdomen_dicom" / "series").is_dir():
                return pathlib.Path(candidate)
        raise AssertionError(f"SegMoTE test data not found in {candidates}: set SEGMOTE_TEST_DATA")

    def _backend(self, logic: SegMoTELogic) -> Backend:
        serverUrl = os.environ.get("SEGMOTE_TEST_SERVER")
        if serverUrl:
            return logic.backend(BackendMode.SERVER, serverUrl=serverUrl, token=os.environ.get("SEGMOTE_TEST_TOKEN", ""))
        return logic.backend(BackendMode.LOCAL, device="auto")

    def test_SegMoTEPipeline(self):
        self.delayDisplay("Loading the abdominal CT series")
        dataFolder = self._dataFolder()
        from DICOMLib import DICOMUtils

        databaseFolder = tempfile.mkdtemp(prefix="SegMoTETestDICOM")
        with DICOMUtils.TemporaryDICOMDatabase(databaseFolder):
            DICOMUtils.importDicom(str(dataFolder / "ct_abdomen_dicom" / "series"))
            seriesUids = [series for patient in slicer.dicomDatabase.patients()
                          for study in slicer.dicomDatabase.studiesForPatient(patient)
                          for series in slicer.dicomDatabase.seriesForStudy(study)]
            self.assertEqual(len(seriesUids), 1)
            volumeNode = slicer.mrmlScene.GetNodeByID(DICOMUtils.loadSeriesByUID(seriesUids)[0])
            self._runPipeline(dataFolder, volumeNode)

    def _runPipeline(self, dataFolder: pathlib.Path, volumeNode):
        logic = SegMoTELogic()
        backend = self._backend(logic)
        grid = logic.grid(volumeNode)

        # Reference liver on the volume's grid (the reference file stores rows flipped; Slicer resamples by geometry).
        referenceNode = slicer.util.loadLabelVolume(str(dataFolder / "ct_abdomen_dicom" / "labels.nii.gz"))
        liverOnly = (slicer.util.arrayFromVolume(referenceNode) == self.LIVER_LABEL).astype(np.uint8)
        slicer.util.updateVolumeFromArray(referenceNode, liverOnly)
        referenceSegmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reference")
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(referenceNode, referenceSegmentation)
        liverId = referenceSegmentation.GetSegmentation().GetNthSegmentID(0)
        reference = slicer.util.arrayFromSegmentBinaryLabelmap(referenceSegmentation, liverId, volumeNode) > 0
        self.assertGreater(int(reference[self.PROMPT_SLICE_K].sum()), 500)

        self.delayDisplay("Box prompt on the liver")
        rows, cols = np.nonzero(reference[self.PROMPT_SLICE_K])
        cornersIjk = np.array([[cols.min() - 3, rows.min() - 3, self.PROMPT_SLICE_K], [cols.max() + 3, rows.max() + 3, self.PROMPT_SLICE_K]], dtype=float)
        cornersRas = [tuple(corner) for corner in lps_to_ras(grid.ijk_to_lps(cornersIjk))]
        plane = ViewPlane(view="axial", axis_ijk=2, slice_index=self.PROMPT_SLICE_K, angle_degrees=0.0)
        group = PromptGroup("liver", plane)
        group.set_box(*cornersRas)
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "SegMoTE test")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentId = segmentationNode.GetSegmentation().AddEmptySegment("liver", "liver")
        voxels = logic.segmentWithPrompts(backend, volumeNode, segmentationNode, segmentId, group)
        self.assertGreater(voxels, 0)
        result = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode) > 0
        predicted, truth = result[self.PROMPT_SLICE_K], reference[self.PROMPT_SLICE_K]
        dice = 2.0 * np.logical_and(predicted, truth).sum() / (predicted.sum() + truth.sum())
        logging.info("SegMoTE self-test: box Dice %.3f on slice %d", dice, self.PROMPT_SLICE_K)
        self.assertGreaterEqual(dice, self.MINIMUM_BOX_DICE)
        self.assertEqual(int(result[self.PROMPT_SLICE_K + 1].sum()), 0, "a 2-D prompt changed another slice")

        self.delayDisplay("Auto-segmentation of one structure")
        structures = backend.structures()
        self.assertTrue(structures, "the backend lists no structures for auto-segmentation")
        structure = "liver" if "liver" in structures else structures[0]
        session = logic.session(backend, volumeNode)
        job = BackgroundJob(lambda progress, cancel: session.auto([structure], progress, cancel))
        job.start()
        state = job.wait()
        self.assertIsNone(state.error, user_message(state.error) if state.error else "")
        autoNode = logic.addLabelsAsSegmentation(volumeNode, state.result, [structure])
        autoSegmentId = autoNode.GetSegmentation().GetNthSegmentID(0)
        self.assertGreater(int((slicer.util.arrayFromSegmentBinaryLabelmap(autoNode, autoSegmentId, volumeNode) > 0).sum()), 0)

        self.delayDisplay("DICOM-SEG export and reload")
        exportFolder = pathlib.Path(tempfile.mkdtemp(prefix="SegMoTETestExport"))
        path = logic.export(volumeNode, segmentationNode, "DICOM-SEG", exportFolder, addToDicomDatabase=False)
        import highdicom
        import pydicom

        seg = highdicom.seg.segread(str(path))
        source = pydicom.dcmread(str(logic.dicomSourceFiles(volumeNode)[0]), stop_before_pixels=True)
        self.assertEqual(seg.ReferencedSeriesSequence[0].SeriesInstanceUID, source.SeriesInstanceUID)
        self.assertEqual(seg.SegmentSequence[0].SegmentLabel, "liver")
        self.assertEqual(int(np.count_nonzero(seg.pixel_array)), int(result.sum()))
        self.delayDisplay("Test passed")
