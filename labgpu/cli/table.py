"""The one way `labgpu` subcommands print rows: aligned columns for people, CSV for programs."""

from __future__ import annotations

import csv
import sys
from collections.abc import Collection, Sequence
from typing import TextIO


def format_table(rows: Sequence[Sequence[str]], *, right_aligned: Collection[int] = ()) -> str:
    """``rows`` (the header first) as columns two spaces apart, each as wide as its widest cell;
    the columns numbered in ``right_aligned`` (figures) are aligned right, the others left."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.rjust(width) if i in right_aligned else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )


def write_csv(header: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO | None = None) -> None:
    """``rows`` as CSV on ``out`` (stdout), under the header in snake_case ('GPU-H HELD' -> 'gpu_h_held')."""
    writer = csv.writer(out or sys.stdout)
    writer.writerow([name.lower().replace(" ", "_").replace("-", "_") for name in header])
    writer.writerows(rows)
