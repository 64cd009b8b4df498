"""Where trialflow keeps its own files on this machine: beat's schedule, the worker's liveness
files. ``TRIALFLOW_DATA_DIR``, or a per-user data directory by the platform's convention.

The directory must be private: created with mode 0700, and refused when it belongs to another
user or others may write in it. A file at a fixed path in a shared directory (``/tmp``) could be
created first by anyone on the machine, with contents of their choosing.
"""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from trialflow.errors import ConfigError
from trialflow.settings import Settings


def default_data_dir() -> Path:
    """The per-user data directory: ``$XDG_DATA_HOME/trialflow`` (``~/.local/share/trialflow``) on
    Linux and the like, ``~/Library/Application Support/trialflow`` on macOS,
    ``%LOCALAPPDATA%\\trialflow`` on Windows."""
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        return (Path(local) if local else Path.home() / "AppData" / "Local") / "trialflow"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "trialflow"
    xdg = os.environ.get("XDG_DATA_HOME", "")
    # The XDG spec: a relative path is invalid and must be ignored.
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share") / "trialflow"


def data_dir(settings: Settings, *parts: str) -> Path:
    """The data directory (or a sub-directory of it), created private if it does not exist yet."""
    path = private_dir(Path(settings.data_dir or default_data_dir()))
    for part in parts:
        path = private_dir(path / part)
    return path


def private_dir(path: Path) -> Path:
    """``path`` as a directory only this user can write in; a ConfigError says why it is not."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"TRIALFLOW_DATA_DIR: cannot use {path}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"TRIALFLOW_DATA_DIR: {path} is not a directory")
    if hasattr(os, "geteuid"):
        if info.st_uid != os.geteuid():
            raise ConfigError(f"TRIALFLOW_DATA_DIR: {path} belongs to another user (uid {info.st_uid}); "
                              "trialflow keeps its files only in a directory of its own user")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ConfigError(f"TRIALFLOW_DATA_DIR: others may write in {path} (mode {stat.S_IMODE(info.st_mode):o}); "
                              f"run `chmod go-w {path}` or choose another directory")
    return path
