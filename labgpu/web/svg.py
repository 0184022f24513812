"""The pages' charts as server-side SVG: no JavaScript library, no CDN (a hub may be offline).

Colours are the Okabe-Ito palette (told apart with every common colour-vision deficiency), and
the two series of a chart differ in more than colour (a solid bar inside an outlined one; a
dashed line). Every chart is ``role="img"`` with a ``<title>`` and a ``<desc>`` that says what it
shows in words; the pages print the same figures in a table beside it. Pure: strings in,
strings out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

# Okabe & Ito (2008), "Color Universal Design".
BLUE = "#0072B2"
ORANGE = "#E69F00"
GREEN = "#009E73"
VERMILLION = "#D55E00"
SKY = "#56B4E9"
PURPLE = "#CC79A7"
GREY = "#6c757d"


def _n(value: float) -> str:
    """A coordinate, short."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def nice_ceiling(value: float) -> float:
    """The axis top: 1, 2, 2.5 or 5 times a power of ten, at least ``value`` (1 for nothing)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power + 1e-9:
            return step * power
    return 10 * power


def sparkline(
    values: Sequence[float | None], *, label: str, width: int = 120, height: int = 24, top: float = 100.0
) -> str:
    """A line of ``values`` (None: no sample) scaled to 0..``top``, for the GPU board."""
    points = [(i, v) for i, v in enumerate(values) if v is not None]
    body = ""
    if points:
        step = width / max(1, len(values) - 1)
        coords = " ".join(f"{_n(i * step)},{_n(height - 1 - (height - 2) * min(v, top) / top)}" for i, v in points)
        body = (
            f'<polyline fill="none" stroke="{BLUE}" stroke-width="1.5" points="{coords}"/>'
            if len(points) > 1
            else f'<circle cx="{_n(points[0][0] * step)}" cy="{_n(height / 2)}" r="2" fill="{BLUE}"/>'
        )
    return (
        f'<svg class="labgpu-spark" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}"><title>{escape(label)}</title>'
        f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" stroke="{GREY}" stroke-width="0.5"/>'
        f"{body}</svg>"
    )


@dataclass(frozen=True)
class Bar:
    """One category of a held/busy chart: ``busy`` is drawn inside ``held``."""

    label: str  # the axis label (e.g. "12-03")
    held: float
    busy: float | None = None  # None: no telemetry


def held_busy_chart(bars: Sequence[Bar], *, title: str, unit: str = "GPU-hours", width: int = 720) -> str:
    """Vertical bars: GPU-hours held (outlined, light) with the busy part inside (solid)."""
    height, left, bottom, top_pad = 220, 48, 36, 28
    plot_w, plot_h = width - left - 8, height - bottom - top_pad
    top = nice_ceiling(max([b.held for b in bars] + [b.busy or 0.0 for b in bars] + [0.0]))
    slot = plot_w / max(1, len(bars))
    bar_w = max(2.0, slot * 0.7)
    parts: list[str] = []
    for k in range(5):
        value = top * k / 4
        y = top_pad + plot_h - plot_h * k / 4
        parts.append(
            f'<line x1="{left}" y1="{_n(y)}" x2="{width - 8}" y2="{_n(y)}" stroke="{GREY}" stroke-width="0.3"/>'
        )
        parts.append(f'<text x="{left - 4}" y="{_n(y + 4)}" text-anchor="end" font-size="11">{value:g}</text>')
    every = max(1, math.ceil(len(bars) / 15))  # at most ~15 labels under the axis
    for i, bar in enumerate(bars):
        x = left + i * slot + (slot - bar_w) / 2
        held_h = plot_h * bar.held / top
        tip = f"{bar.label}: {bar.held:.1f} {unit} held" + ("" if bar.busy is None else f", {bar.busy:.1f} busy")
        parts.append(f"<g><title>{escape(tip)}</title>")
        parts.append(
            f'<rect x="{_n(x)}" y="{_n(top_pad + plot_h - held_h)}" width="{_n(bar_w)}" height="{_n(held_h)}" '
            f'fill="{SKY}" fill-opacity="0.35" stroke="{BLUE}" stroke-width="1"/>'
        )
        if bar.busy:
            busy_h = plot_h * min(bar.busy, top) / top
            parts.append(
                f'<rect x="{_n(x + bar_w * 0.2)}" y="{_n(top_pad + plot_h - busy_h)}" width="{_n(bar_w * 0.6)}" '
                f'height="{_n(busy_h)}" fill="{ORANGE}"/>'
            )
        parts.append("</g>")
        if i % every == 0:
            parts.append(
                f'<text x="{_n(x + bar_w / 2)}" y="{height - bottom + 14}" text-anchor="middle" '
                f'font-size="10">{escape(bar.label)}</text>'
            )
    total_held = sum(b.held for b in bars)
    busy_known = [b.busy for b in bars if b.busy is not None]
    desc = f"{title}: {len(bars)} bars, {total_held:.1f} {unit} held in all"
    desc += f", {sum(busy_known):.1f} busy." if busy_known else "; no busy figures (no telemetry)."
    legend = (
        f'<rect x="{left}" y="6" width="12" height="12" fill="{SKY}" fill-opacity="0.35" stroke="{BLUE}"/>'
        f'<text x="{left + 16}" y="16" font-size="11">held</text>'
        f'<rect x="{left + 60}" y="6" width="8" height="12" fill="{ORANGE}"/>'
        f'<text x="{left + 72}" y="16" font-size="11">busy (running kernels)</text>'
        f'<text x="{width - 8}" y="16" font-size="11" text-anchor="end">{escape(unit)}</text>'
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" font-family="sans-serif" fill="currentColor">'
        f"<title>{escape(title)}</title><desc>{escape(desc)}</desc>{legend}"
        f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{width - 8}" y2="{top_pad + plot_h}" stroke="{GREY}"/>'
        + "".join(parts)
        + "</svg>"
    )


def ranking_chart(rows: Sequence[Bar], *, title: str, unit: str = "GPU-hours", width: int = 720) -> str:
    """Horizontal bars, one per user or group (largest first, as given): held with busy inside."""
    row_h, left, right = 22, 140, 90
    height = 30 + row_h * max(1, len(rows))
    plot_w = width - left - right
    top = nice_ceiling(max([r.held for r in rows] + [0.0]))
    parts: list[str] = []
    for i, row in enumerate(rows):
        y = 26 + i * row_h
        held_w = plot_w * row.held / top
        busy = "" if row.busy is None else f", {row.busy:.1f} busy"
        parts.append(f"<g><title>{escape(f'{row.label}: {row.held:.1f} {unit} held{busy}')}</title>")
        parts.append(
            f'<text x="{left - 6}" y="{y + 14}" text-anchor="end" font-size="11">{escape(row.label[:22])}</text>'
        )
        parts.append(
            f'<rect x="{left}" y="{y + 2}" width="{_n(held_w)}" height="{row_h - 6}" fill="{SKY}" '
            f'fill-opacity="0.35" stroke="{BLUE}"/>'
        )
        if row.busy:
            parts.append(
                f'<rect x="{left}" y="{y + 6}" width="{_n(plot_w * min(row.busy, top) / top)}" '
                f'height="{row_h - 14}" fill="{ORANGE}"/>'
            )
        parts.append(
            f'<text x="{_n(left + held_w + 4)}" y="{y + 14}" font-size="11">{row.held:.1f}{busy and " / "}'
            f"{'' if row.busy is None else f'{row.busy:.1f}'}</text></g>"
        )
    desc = f"{title}: " + "; ".join(
        f"{r.label} {r.held:.1f} held" + ("" if r.busy is None else f", {r.busy:.1f} busy") for r in rows[:20]
    )
    legend = (
        f'<rect x="{left}" y="4" width="12" height="12" fill="{SKY}" fill-opacity="0.35" stroke="{BLUE}"/>'
        f'<text x="{left + 16}" y="14" font-size="11">{escape(unit)} held</text>'
        f'<rect x="{left + 130}" y="6" width="12" height="8" fill="{ORANGE}"/>'
        f'<text x="{left + 146}" y="14" font-size="11">busy</text>'
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" font-family="sans-serif" fill="currentColor">'
        f"<title>{escape(title)}</title><desc>{escape(desc)}</desc>{legend}" + "".join(parts) + "</svg>"
    )
