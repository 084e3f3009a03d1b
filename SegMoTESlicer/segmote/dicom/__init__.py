"""DICOM input and output without torch: series reading, DICOM-SEG writing and PACS push.

- :mod:`.series`: read a folder of DICOM files as one 3-D image (``read_series``, ``list_series``).
- :mod:`.seg_writer`: write a label map on a series grid as DICOM-SEG (``write_seg_for_volume``).
- :mod:`.push`: send files by DICOMweb STOW-RS or DIMSE C-STORE.
- :mod:`.commands`: the ``export`` and ``push`` subcommands.

The submodules are imported on demand, so reading a series does not load highdicom.
"""
