"""Byte counts as people write and read them: binary units (1M = 1048576 bytes)."""

from __future__ import annotations

import re

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:iB)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_NAMES = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def parse_size(text: str) -> int:
    """``1048576``, ``64M``, ``64MiB``, ``1.5G`` → bytes. Raises ValueError naming ``text``.

    ``64MB`` is refused: people mean 10⁶ by it as often as 2²⁰.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid size {text!r}: expected a number with an optional unit "
                         "K, M, G or T (binary: 1M = 1048576 bytes)")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.upper()])


def human_bytes(count: float) -> str:
    """``1536`` → ``1.5 KiB``; whole bytes below 1 KiB."""
    size = float(count)
    for name in _NAMES:
        if abs(size) < 1024 or name == _NAMES[-1]:
            return f"{size:.0f} B" if name == "B" else f"{size:.1f} {name}"
        size /= 1024
    raise AssertionError("unreachable")
