"""What machine a benchmark ran on, recorded beside its figures in benchmarks/results/."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine_info(**extra: Any) -> dict[str, Any]:
    """Platform, CPU model, cores, host, Python, load average and date, plus ``extra``."""
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "host": platform.node(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }
