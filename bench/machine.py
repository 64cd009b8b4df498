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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far, from /proc (Linux); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command name) of every process (Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                before, _, after = (entry / "stat").read_text().rpartition(")")
                found.append((int(entry.name), int(after.split()[1]), before.partition("(")[2]))
            except OSError:
                continue
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU time so far of a process and its live descendants."""
    children: dict[int, list[int]] = {}
    for child, parent, _name in processes():
        children.setdefault(parent, []).append(child)
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += cpu_seconds(current)
        todo.extend(children.get(current, []))
    return total


def postgres_cpu_seconds(database: str) -> float:
    """CPU time so far of the PostgreSQL backends connected to ``database``."""
    total = 0.0
    for pid, _parent, name in processes():
        if name == "postgres":
            try:
                if f" {database} ".encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    total += cpu_seconds(pid)
            except OSError:
                continue
    return total
