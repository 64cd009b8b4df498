"""The README's table of settings, written from the ``Settings`` class (each field's description
and default), so the two cannot drift: ``scripts/settings-table`` rewrites the table in place, and
a test fails when the README's table is not what this writes."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from trialflow.settings import Settings

START = "<!-- settings table: written by scripts/settings-table from trialflow/settings.py -->"
END = "<!-- end of the settings table -->"


def _default(field: Any) -> str:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "shown" in extra:
        return str(extra["shown"])
    value = field.default
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def render() -> str:
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        meaning = (field.description or "").replace("|", "\\|")
        default = _default(field).replace("|", "\\|")
        rows.append(f"| `TRIALFLOW_{name.upper()}` | {default} | {meaning} |")
    return "\n".join([START, *rows, END])


def in_readme(text: str) -> str:
    """The table as the README has it (between the markers); ValueError if the markers are missing."""
    start, end = text.index(START), text.index(END) + len(END)
    return text[start:end]


def write(readme: Path) -> bool:
    """Rewrite the table in ``readme``; True if it changed."""
    text = readme.read_text(encoding="utf-8")
    new = text.replace(in_readme(text), render())
    if new != text:
        readme.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    print(f"{path}: settings table {'rewritten' if write(path) else 'already up to date'}")
