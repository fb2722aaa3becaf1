"""Values settings are made of: sizes and budgets, the cores a process may use, URLs
with their passwords hidden."""

from __future__ import annotations

import os
import re

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A URL's userinfo: everything between "scheme://" and the authority's last "@".
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s]*@")


def redact_userinfo(text: str) -> str:
    """``text`` with the user and password of every URL in it shown as ``***``."""
    return _USERINFO.sub(r"\1***@", text)


_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}


def parse_size(text: str) -> int:
    """Bytes from a human size: ``36GiB``, ``36 GB``, ``36000M``, ``1.5T``.

    Decimal units (GB, M) are powers of 1000, binary ones (GiB, MiB) of 1024.
    Raises ValueError with a message naming the input.
    """
    cleaned = text.strip().lower().replace(" ", "").replace("_", "")
    number = cleaned.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = cleaned[len(number):]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (try 36GiB, 36 GB or 36000M)") from None
    if unit not in _SIZE_UNITS:
        raise ValueError(f"unknown unit {unit!r} in {text!r} (use B, KB, MB, GB, TB, "
                         "KiB, MiB, GiB or TiB)")
    if value <= 0:
        raise ValueError(f"a size must be positive, got {text!r}")
    return int(value * _SIZE_UNITS[unit])


def budget_bytes(value: str | int) -> int:
    """Bytes from a budget: a size (``512MiB``), a count of bytes, or 0 for none."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a budget cannot be negative, got {value}")
        return value
    if value.strip() in ("0", "0B", "0b"):
        return 0
    return parse_size(value)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else (os.cpu_count() or 1))
