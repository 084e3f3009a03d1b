"""Exceptions that carry a message meant for the user.

The CLI prints an :class:`InputError` as one line and exits with status 2;
the server maps it to HTTP 400. The message names the invalid value and the fix.
"""

from __future__ import annotations


class SegMoTEError(Exception):
    """Base class for errors whose message is shown to the user as it is."""


class InputError(SegMoTEError, ValueError):
    """Invalid input or usage: a file, a prompt, an option value."""


class ModelError(SegMoTEError):
    """A model or checkpoint could not be built or loaded."""
