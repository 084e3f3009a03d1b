"""Memory figures for the health check: host memory, this process, and the GPU."""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path
from typing import Any, Optional


def _meminfo_bytes(field: str) -> Optional[int]:
    """Read one ``/proc/meminfo`` field (Linux) in bytes, or None elsewhere."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # the file reports kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_rss_bytes() -> int:
    """Resident memory of this process now (Linux), or its peak where the current value is unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def host_memory() -> dict[str, Optional[int]]:
    """Return the host's total and available memory in bytes (None when unknown)."""
    total = _meminfo_bytes("MemTotal")
    available = _meminfo_bytes("MemAvailable")
    if total is None and hasattr(os, "sysconf"):
        try:
            page = os.sysconf("SC_PAGE_SIZE")
            total = os.sysconf("SC_PHYS_PAGES") * page
            available = os.sysconf("SC_AVPHYS_PAGES") * page
        except (ValueError, OSError):
            pass
    return {"total_bytes": total, "available_bytes": available}


def gpu_memory(device: Any) -> Optional[dict[str, int]]:
    """Return free and total memory of a CUDA device in bytes, or None for a CPU device."""
    if getattr(device, "type", str(device)) != "cuda":
        return None
    import torch

    free, total = torch.cuda.mem_get_info(device)
    return {"free_bytes": int(free), "total_bytes": int(total), "allocated_bytes": int(torch.cuda.memory_allocated(device))}
