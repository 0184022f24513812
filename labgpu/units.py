"""The units people write and read: sizes (``16G``), durations (``1h30m``) and counts (``2 GPUs``).

One grammar for each, shared by the quota files, the spawn form, the GPU inventory's static
files, the command line and every message a user reads, so that ``16G`` means the same bytes
everywhere and a message never says ``GPU(s)``. Pure: no I/O, no imports from the rest of labgpu.
"""

from __future__ import annotations

import math
import re
from typing import Any

# Binary units like Docker's: 1K = 1024 bytes, 1G = 1024**3.
SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtTpP]?)(i?)([bB]?)\s*$")

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhdw])")
_DURATION_RE = re.compile(r"^\s*(?:[0-9]+(?:\.[0-9]+)?\s*[smhdw]\s*)+$")
UNLIMITED_WORDS = ("unlimited", "never")
# Longest size or duration text read: "1.5T" and "1h30m" are short; a 400-digit number is an
# accident or an attack (a float of it is infinite; an int of 5,000 digits cannot even be printed).
MAX_TEXT = 64
MAX_BITS = 128  # sizes and seconds as whole numbers: far beyond any memory or lifetime


def _shown(value: Any) -> str:
    """``value`` for a message, cut short: a size or duration is never longer than MAX_TEXT."""
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        return "a number that large"
    text = repr(value)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def parse_size(value: Any) -> int:
    """Bytes from what an admin or user writes: ``16G``, ``512Mi``, ``1.5g``, ``2GB`` or a
    number of bytes. Units are binary like Docker's (``1G`` = 1024**3); raises ValueError."""
    size = _size(value)
    if size.bit_length() > MAX_BITS:
        raise ValueError(f"is far too large (got {_shown(value)})")
    return size


def _size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"must be a size like 16G or 512M (got {value!r})")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative (got {_shown(value)})")
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0 or not value.is_integer():
            raise ValueError(f"must be a size like 16G or 512M (got {value!r})")
        return int(value)
    if isinstance(value, str) and len(value) <= MAX_TEXT:
        match = _SIZE_RE.match(value)
        if match:
            number, unit, binary, _byte = match.groups()
            if not (binary and not unit):  # "512i" is not a size; "512Mi" and "512MiB" are
                scale = SIZE_UNITS[unit.lower()]
                if "." in number:
                    return int(float(number) * scale)
                return int(number) * scale  # exact
    raise ValueError(f"must be a size like 16G, 512M or 1.5T (got {_shown(value)})")


def format_size(size: int) -> str:
    """The shortest exact-ish spelling an admin would write: ``16G``, ``512M``, ``1.5T``."""
    for unit in ("P", "T", "G", "M", "K"):
        scale = SIZE_UNITS[unit.lower()]
        if size >= scale:
            amount = size / scale
            text = f"{amount:.1f}".rstrip("0").rstrip(".") if not amount.is_integer() else str(int(amount))
            return f"{text}{unit}"
    return f"{size}B"


def parse_duration(value: Any) -> float:
    """Seconds from ``2h``, ``30m``, ``1h30m``, ``7d``, ``1w`` or a number of seconds;
    ``unlimited``/``never`` give ``math.inf``. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration like 30m, 2h or 7d (got {value!r})")
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        raise ValueError(f"is far too long; write unlimited for no limit (got {_shown(value)})")
    if isinstance(value, (int, float)):
        if (isinstance(value, float) and math.isnan(value)) or value < 0:
            raise ValueError(f"must be a duration like 30m, 2h or 7d (got {value!r})")
        return float(value)
    if isinstance(value, str) and len(value) <= MAX_TEXT:
        text = value.strip().lower()
        if text in UNLIMITED_WORDS:
            return math.inf
        if _DURATION_RE.match(text):
            seconds = float(sum(float(n) * DURATION_UNITS[u] for n, u in _DURATION_PART_RE.findall(text)))
            if seconds < 2.0**MAX_BITS:  # never infinite: only "unlimited" is
                return seconds
    raise ValueError(f"must be a duration like 30m, 2h, 1h30m or 7d, or unlimited (got {_shown(value)})")


def format_duration(seconds: float | None) -> str:
    """``2h``, ``1h30m``, ``7d`` or ``unlimited`` (None or infinity): the admins' spelling."""
    if seconds is None or math.isinf(seconds):
        return "unlimited"
    rest = int(seconds)
    parts = []
    for unit, scale in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= scale:
            parts.append(f"{rest // scale}{unit}")
            rest %= scale
    return "".join(parts) or "0s"


def format_minutes(seconds: float) -> str:
    """A span in words for messages, to the minute: ``12 min``, ``2 h``, ``1 h 05 min``."""
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if minutes else f"{hours} h"


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 request``, ``2 requests``, ``0 requests``; ``many`` for irregular plurals."""
    return f"{count} {word if count == 1 else (many or word + 's')}"


def gpus_text(count: int, model: str = "") -> str:
    """``1 GPU``, ``2 GPUs``, ``0 GPUs``, ``2 A100 GPUs``: how every message counts GPUs."""
    return plural(count, f"{model} GPU" if model else "GPU")
