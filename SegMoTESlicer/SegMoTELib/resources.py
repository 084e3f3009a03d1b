"""Finding the module's resources (``.ui`` file, icons) from the module file's own location.

In a source checkout added with "Add module path", the module file sits in
``SegMoTESlicer/`` and the resources in ``Resources/`` beside that folder. A
built or installed extension copies them into ``Resources/`` beside the module
file (``qt-scripted-modules/Resources``). This module imports neither slicer,
Qt nor torch.
"""

from __future__ import annotations

import os

from segmote.errors import InputError

# Folders searched, relative to the module file's folder: installed layout first.
RESOURCE_FOLDERS = ("Resources", os.path.join(os.pardir, "Resources"))


def find_resource(module_file: str, relative_path: str) -> str:
    """Return the absolute path of a resource such as ``UI/SegMoTE.ui``.

    Raises:
        InputError: the resource is in neither layout (an incomplete checkout or install).
    """
    module_folder = os.path.dirname(os.path.abspath(module_file))
    searched = []
    for folder in RESOURCE_FOLDERS:
        candidate = os.path.normpath(os.path.join(module_folder, folder, relative_path))
        if os.path.isfile(candidate):
            return candidate
        searched.append(candidate)
    raise InputError(
        f"SegMoTE resource {relative_path} not found (searched {', '.join(searched)}): "
        "reinstall the extension or update the checkout"
    )
