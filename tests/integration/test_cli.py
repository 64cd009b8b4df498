"""The command line as a person meets it: help with defaults on every command and option, a bad
argument refused in one line with exit 2, a bad setting named in one line. A few runs go through
the real entry point (a new process); the walks over every command use the same app in-process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from trialflow import cli
from trialflow.domain.lifecycle import STATES
from trialflow.settings import get_settings

ROOT = Path(__file__).resolve().parents[2]


def trialflow(*args: str, cwd: Path = ROOT, extra: dict[str, str] | None = None,
              **settings: str) -> subprocess.CompletedProcess:
    """The real entry point in a new process, with only the TRIALFLOW_ settings given (and ``extra``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIALFLOW_")}
    env.update({f"TRIALFLOW_{k.upper()}": v for k, v in settings.items()}, **(extra or {}))
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "trialflow.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60, check=False)


def commands(command=None, path: tuple[str, ...] = ()):
    """Every command and sub-command of the real app: (path, command)."""
    command = command or typer.main.get_command(cli.app)
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from commands(sub, (*path, name))


def test_config_load_help_is_config_load_s_help():
    done = trialflow("config", "load", "--help")
    assert done.returncode == 0
    assert "trialflow config load [OPTIONS]" in done.stdout
    assert "--dir" in done.stdout and "TRIALFLOW_CONFIG_DIR" in done.stdout


def test_serve_help_explains_host_and_port_with_their_defaults(capsys):
    assert cli.main(["serve", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "[default: 127.0.0.1]" in out and "[default: 8000]" in out and "address to listen on" in out


def test_every_command_and_option_has_help_and_every_option_its_default():
    missing = []
    for path, command in commands():
        if path and not (command.help or getattr(command, "short_help", None)):
            missing.append(" ".join(path))
        for param in command.params:
            if param.name == "help" or param.param_type_name == "argument":
                continue
            if not param.help:
                missing.append(f"{' '.join(path)} {param.opts[0]}: no help")
            if param.required is False and param.show_default in (None, False):
                missing.append(f"{' '.join(path)} {param.opts[0]}: no default shown")
            if param.default in (None, False) and not isinstance(param.show_default, str):
                # Help shows nothing for None or an off flag: the default must be said in words.
                missing.append(f"{' '.join(path)} {param.opts[0]}: default not said in words")
    assert missing == []
    assert len(list(commands())) >= 20


def test_a_bad_state_exits_2_in_one_line_naming_the_valid_states():
    done = trialflow("trials", "list", "--state", "bogus")
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("error: Invalid value for '--state': 'bogus' is not one of")
    assert all(f"'{state}'" in done.stderr for state in STATES)


@pytest.mark.parametrize("argv, says", [
    (["bogus"], "No such command 'bogus'"),
    (["outbox", "retry"], "Missing argument 'ID'"),
    (["outbox", "retry", "seven"], "Invalid value for 'ID': Input should be a valid integer"),
    (["sweep", "--at", "tomorrow"], "'tomorrow' is not an ISO-8601 time"),
    (["serve", "--port", "0"], "'--port'"),
    (["report", "--weeks", "0"], "'--weeks'"),
    (["graph", "--format", "png"], "'png' is not one of 'mermaid', 'dot'"),
    (["outbox", "--status", "lost"], "'lost' is not one of"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, argv, says):
    assert cli.main(argv) == 2
    said = capsys.readouterr()
    assert said.out == ""
    assert len(said.err.strip().splitlines()) == 1 and said.err.startswith("error: ") and says in said.err


def test_a_command_group_without_its_sub_command_shows_its_help_and_exits_2(capsys):
    assert cli.main(["trials"]) == 2
    said = capsys.readouterr()
    assert "list" in said.out + said.err and "show" in said.out + said.err


def test_a_bad_setting_is_one_line_naming_the_variable_and_what_it_expects():
    done = trialflow("trials", "list", instance_cap="abc")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "error: TRIALFLOW_INSTANCE_CAP expects a whole number\n"
    assert "pydantic" not in done.stderr


@pytest.fixture
def environment(monkeypatch):
    def set_env(**settings: str) -> None:
        for name, value in settings.items():
            monkeypatch.setenv(f"TRIALFLOW_{name.upper()}", value)
        get_settings.cache_clear()
    yield set_env
    get_settings.cache_clear()


def test_each_bad_setting_has_its_own_line_and_secrets_are_never_echoed(capsys, environment):
    environment(pool_low_water="-1", delivery_lease_seconds="soon", log_json="perhaps",
                slack_bot_token="changeme", metrics_token="short-but-a-secret")
    assert cli.main(["trials", "list"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert "error: TRIALFLOW_POOL_LOW_WATER expects a number ≥ 0" in lines
    assert "error: TRIALFLOW_DELIVERY_LEASE_SECONDS expects a number" in lines
    assert "error: TRIALFLOW_LOG_JSON expects true or false" in lines
    assert len(lines) == 3  # the checks across settings run once the fields themselves are right
    environment(pool_low_water="1", delivery_lease_seconds="5", log_json="false")
    assert cli.main(["trials", "list"]) == 2
    err = capsys.readouterr().err
    assert err == "error: TRIALFLOW_SLACK_BOT_TOKEN is still a placeholder: set a real value or unset it\n"
    assert "short-but-a-secret" not in err


def test_the_same_database_is_found_from_any_folder(tmp_path):
    """No TRIALFLOW_DATABASE_URL: the SQLite file in the per-user data directory, wherever the CLI runs."""
    home = {"HOME": str(tmp_path / "home"), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    assert trialflow("migrate", cwd=one, extra=home).returncode == 0
    rotated = trialflow("license", "rotated", cwd=two, extra=home)
    assert rotated.returncode == 0, rotated.stderr  # "no such table" if two had a database of its own
    data = tmp_path / "xdg" / "trialflow"
    assert (data / "trialflow.db").is_file() and data.stat().st_mode & 0o777 == 0o700
    assert list(one.iterdir()) == list(two.iterdir()) == []


def test_trialflow_data_dir_holds_the_database(tmp_path, monkeypatch, environment):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRIALFLOW_DATABASE_URL", raising=False)
    environment(data_dir=str(tmp_path / "data"))
    assert cli.main(["migrate"]) == 0
    assert (tmp_path / "data" / "trialflow.db").is_file() and not (tmp_path / "trialflow.db").exists()

