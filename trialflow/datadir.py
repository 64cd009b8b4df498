"""Where trialflow keeps its own files on this machine: the SQLite database (when no
``TRIALFLOW_DATABASE_URL`` is given), beat's schedule, the worker's liveness files, the signup
spool. ``TRIALFLOW_DATA_DIR``, or a per-user data directory by the platform's convention
(``settings.default_data_dir``).

The directory must be private: created with mode 0700, and refused when it belongs to another
user or others may write in it. A file at a fixed path in a shared directory (``/tmp``) could be
created first by anyone on the machine, with contents of their choosing.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from trialflow.errors import ConfigError
from trialflow.settings import Settings, default_data_dir

__all__ = ["data_dir", "default_data_dir", "private_dir"]


def data_dir(settings: Settings, *parts: str) -> Path:
    """The data directory (or a sub-directory of it), created private if it does not exist yet."""
    path = private_dir(settings.data_path)
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
