"""Byte counts as people write and read them: binary units (1M = 1048576 bytes)."""

from __future__ import annotations

import re

# ASCII digits only: \d would also take "٣M" (Arabic-Indic three) as 3 MiB.
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:iB)?", re.IGNORECASE | re.ASCII)
# No byte count anyone means has more digits; bounds the float conversion
# below (1e309 and more are infinite, and int(inf) raises OverflowError).
_MAX_DIGITS = 30
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_NAMES = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def parse_size(text: str) -> int:
    """``1048576``, ``64M``, ``64MiB``, ``1.5G`` → bytes. Raises ValueError naming ``text``.

    ``64MB`` is refused: people mean 10⁶ by it as often as 2²⁰.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid size {_shorten(text)!r}: expected a number with an optional "
                         "unit K, M, G or T (binary: 1M = 1048576 bytes)")
    number, unit = match.groups()
    if len(number) > _MAX_DIGITS:
        raise ValueError(f"invalid size {_shorten(text)!r}: too large")
    return int(float(number) * _UNITS[unit.upper()])


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def human_bytes(count: float) -> str:
    """``1536`` → ``1.5 KiB``; whole bytes below 1 KiB."""
    size = float(count)
    for name in _NAMES:
        if abs(size) < 1024 or name == _NAMES[-1]:
            return f"{size:.0f} B" if name == "B" else f"{size:.1f} {name}"
        size /= 1024
    raise AssertionError("unreachable")
