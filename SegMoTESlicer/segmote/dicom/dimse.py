"""A C-STORE sender (pynetdicom) that reports a status per file and keeps going after failures.

This module imports no torch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from ..errors import InputError

logger = logging.getLogger(__name__)

# pynetdicom (and DICOM PS3.8) allow at most 128 presentation contexts per association.
MAX_PRESENTATION_CONTEXTS = 128
# Application Entity titles are at most 16 characters (DICOM AE value representation).
MAX_AE_TITLE_CHARS = 16

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

DIMSE_SUCCESS = 0x0000
# C-STORE warning statuses: coercion of data elements, elements discarded, data set does not match SOP class.
DIMSE_WARNINGS = (0xB000, 0xB006, 0xB007)


class DimseSender:
    """Sends files by C-STORE to one SCP, one association for all files (re-opened after a drop)."""

    def __init__(
        self,
        host: str,
        port: int,
        called_aet: str,
        calling_aet: str,
        timeout_seconds: float,
        files: Sequence[Path],
    ) -> None:
        self.host, self.port, self.called_aet = host, _check_port(port), _check_ae_title(called_aet, "--called-aet")
        self.ae = AE(ae_title=_check_ae_title(calling_aet, "--calling-aet"))
        for attribute in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
            setattr(self.ae, attribute, timeout_seconds)
        self._add_contexts(files)
        self.association: Optional[Association] = None

    def _add_contexts(self, files: Sequence[Path]) -> None:
        """Request one presentation context per SOP class, offering the transfer syntaxes its files use."""
        syntaxes: dict[str, list[str]] = {}
        for path in files:
            try:
                dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
                sop_class, syntax = str(dataset.SOPClassUID), str(dataset.file_meta.TransferSyntaxUID)
            except (OSError, AttributeError, pydicom.errors.InvalidDicomError):
                continue  # reported as a failure of that file when it is sent
            offered = syntaxes.setdefault(sop_class, [])
            candidates = [syntax] + (list(UNCOMPRESSED) if syntax in UNCOMPRESSED + (DeflatedExplicitVRLittleEndian,) else [])
            offered.extend(s for s in candidates if s not in offered)
        if len(syntaxes) > MAX_PRESENTATION_CONTEXTS:
            raise InputError(
                f"the files use {len(syntaxes)} SOP classes, more than the {MAX_PRESENTATION_CONTEXTS} one association "
                "can carry; push them in smaller groups"
            )
        for sop_class, offered in syntaxes.items():
            self.ae.add_requested_context(sop_class, offered)

    def _associate(self) -> Optional[str]:
        """Open the association if it is not open; return the failure reason, or None."""
        if self.association is not None and self.association.is_established:
            return None
        self.association = self.ae.associate(self.host, self.port, ae_title=self.called_aet)
        if self.association.is_established:
            return None
        if self.association.is_rejected:
            return f"association rejected by {self.called_aet} at {self.host}:{self.port} (check the AE titles)"
        return f"no association with {self.called_aet} at {self.host}:{self.port} (connection failed, aborted or timed out)"

    def send(self, path: Path):
        """Send one file and return its :class:`~segmote.dicom.push.PushResult`."""
        from .push import PushResult

        try:
            dataset = pydicom.dcmread(path)
            uid = str(dataset.SOPInstanceUID)
        except (OSError, AttributeError, pydicom.errors.InvalidDicomError) as error:
            return PushResult(path, None, False, f"cannot read the file: {error}")

        failure = self._associate()
        if failure:
            return PushResult(path, uid, False, failure)
        try:
            status = self.association.send_c_store(dataset)
        except (ValueError, RuntimeError) as error:  # no accepted context for this SOP class / transfer syntax
            return PushResult(path, uid, False, f"not sent: {error}")
        if not status or "Status" not in status:
            return PushResult(path, uid, False, "no C-STORE response (association aborted or DIMSE timeout)")
        code = int(status.Status)
        if code == DIMSE_SUCCESS:
            return PushResult(path, uid, True, "stored (status 0x0000)")
        if code in DIMSE_WARNINGS:
            return PushResult(path, uid, True, f"stored with warning status {code:#06x}")
        comment = f" ({status.ErrorComment})" if "ErrorComment" in status else ""
        return PushResult(path, uid, False, f"C-STORE failed with status {code:#06x}{comment}")

    def close(self) -> None:
        """Release the association, if one is open."""
        if self.association is not None and self.association.is_established:
            self.association.release()


def _check_port(port: int) -> int:
    if not 0 < int(port) < 65536:
        raise InputError(f"invalid port {port}: expected 1-65535")
    return int(port)


def _check_ae_title(title: str, option: str) -> str:
    if not title or len(title) > MAX_AE_TITLE_CHARS or "\\" in title or not title.isprintable():
        raise InputError(f"invalid AE title {title!r} for {option}: use 1-{MAX_AE_TITLE_CHARS} printable characters without backslash")
    return title
