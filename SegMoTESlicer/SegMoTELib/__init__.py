"""Slicer-side helpers of the SegMoTE module that import neither slicer, Qt nor torch.

The module file ``SegMoTE.py`` reads nodes and views from Slicer and hands plain
numpy arrays and matrices to these helpers, so that they run and are tested
without Slicer:

- :mod:`.viewgeometry`: volume grids from Slicer's IJKToRAS matrix, and which
  volume axis and voxel slice a slice view shows (oblique views are rejected);
- :mod:`.prompts`: prompt markups to the prompts JSON in RAS;
- :mod:`.merge`: a prompt result merged into one segment or label without
  touching other labels, following the Segment Editor's masking when asked;
- :mod:`.terminology`: segment names to Slicer terminology entries and colours;
- :mod:`.backends`: one backend interface, in-process (torch) or remote (HTTP);
- :mod:`.jobs`: background work with progress and cancel, and batch runs;
- :mod:`.export`: DICOM-SEG and label map export;
- :mod:`.dependencies`: the Python packages that "This computer" mode needs.
"""
