"""What the benchmarks report about the machine they ran on."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe(with_os: bool = True) -> str:
    text = f"{os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}"
    return f"{text}, {platform.system()} {platform.release()}" if with_os else text
