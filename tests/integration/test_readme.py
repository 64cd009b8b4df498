"""The README keeps up with the code: its settings table is the one written from the Settings
class, and it lists every command of the CLI and every route of the API."""
from __future__ import annotations

import re
from pathlib import Path

import typer

from tests.conftest import make_settings
from trialflow import cli, settings_table
from trialflow.runtime import Runtime

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def section(marker: str) -> str:
    """The README's table after the comment starting with ``marker``."""
    start = README.index(f"<!-- {marker}")
    return README[start:README.index("\n\n", README.index("| --- |", start))]


def test_the_settings_table_is_the_one_written_from_the_settings_class():
    assert settings_table.in_readme(README) == settings_table.render(), "run scripts/settings-table"


def test_every_setting_is_in_the_table_once():
    table = settings_table.in_readme(README)
    from trialflow.settings import Settings
    for name in Settings.model_fields:
        assert table.count(f"| `TRIALFLOW_{name.upper()}` |") == 1, name
    undescribed = [name for name, field in Settings.model_fields.items() if not (field.description or "").strip()]
    assert undescribed == [], "each setting says what it means (Field(description=...))"
    for wanted in ("ALERTS_CHANNEL", "EMAIL_FROM", "SUPPORT_EMAIL", "FEEDBACK_SENDER", "DELIVERY_MAX_ATTEMPTS"):
        assert f"`TRIALFLOW_{wanted}`" in table


def leaf_commands(command=None, path: tuple[str, ...] = ()):
    command = command or typer.main.get_command(cli.app)
    subs = getattr(command, "commands", {})
    if path and not subs:
        yield path
    for name, sub in subs.items():
        yield from leaf_commands(sub, (*path, name))


def test_every_command_is_listed():
    rows = [line for line in section("commands").splitlines() if line.startswith("| `trialflow ")]
    missing = []
    for path in leaf_commands():
        head, *rest = path
        if not any(re.search(rf"`trialflow {re.escape(head)}[ `]", row)
                   and all(re.search(rf"\b{re.escape(word)}\b", row) for word in rest) for row in rows):
            missing.append(" ".join(path))
    assert missing == []
    assert len(list(leaf_commands())) >= 20


def routes(app):
    def walk(items):
        for route in items:
            if hasattr(route, "original_router"):
                yield from walk(route.original_router.routes)
            elif hasattr(route, "path"):
                for method in sorted(set(getattr(route, "methods", None) or ()) - {"HEAD"}):
                    yield method, route.path
    return sorted(set(walk(app.routes)))


def test_every_endpoint_is_listed(config_dir):
    from trialflow.api.app import create_app

    rt = Runtime(make_settings("sqlite://", config_dir))
    try:
        found = routes(create_app(rt))
    finally:
        rt.close()
    table = section("endpoints")
    assert [f"{method} {path}" for method, path in found if f"`{method} {path}`" not in table] == []
    assert ("POST", "/api/signups") in found and len(found) >= 20
