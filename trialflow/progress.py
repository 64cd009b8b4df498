"""Progress of long work on the command line (migrations, ``config load``, ``sweep``), on stderr:
a Rich progress bar redrawn in place on a terminal; a few plain lines otherwise (a log file or a CI
job gets each quarter and the end, not a line per batch nor bar-drawing escape codes).

A ``Progress`` is a plain callable ``(label, done, total)``, so the services that report progress
(``services.reference``, ``services.sweep``, ``db.migrate``) never import Rich."""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Progress = Callable[[str, int, int], None]  # (what, done, total)


@contextmanager
def progress_on_stderr() -> Iterator[Progress]:
    if sys.stderr.isatty():
        with _rich_bars() as report:
            yield report
    else:
        yield _PlainLines()


@contextmanager
def _rich_bars() -> Iterator[Progress]:
    # Imported here: Rich costs start-up time, and most commands never draw a bar.
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description:<24}"), BarColumn(bar_width=30),
               TextColumn("{task.completed:>9,.0f}/{task.total:,.0f}"), TimeElapsedColumn())
    tasks: dict[str, Any] = {}
    with Progress(*columns, console=Console(stderr=True), refresh_per_second=10) as bars:
        def report(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bars.add_task(label, total=total)
            bars.update(tasks[label], completed=done, total=total)
        yield report


class _PlainLines:
    """One line per quarter of each label's total, and the last."""

    def __init__(self) -> None:
        self._shown: dict[str, int] = {}

    def __call__(self, label: str, done: int, total: int) -> None:
        quarter = 4 if not total or done >= total else done * 4 // total
        if self._shown.get(label, -1) >= quarter or quarter == 0:
            return
        self._shown[label] = quarter
        sys.stderr.write(f"{label}: {done:,}/{total:,}\n")
        sys.stderr.flush()
