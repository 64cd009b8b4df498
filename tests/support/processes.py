"""Real processes for the Celery tests: a private Redis server we may kill and restart, and
trialflow worker / beat processes started as a user would start them."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.services import unavailable

ROOT = Path(__file__).resolve().parents[2]
TRIALFLOW = str(Path(sys.executable).with_name("trialflow"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class RedisServer:
    """A throw-away redis-server on its own port (nothing persisted), so a test may restart it."""

    def __init__(self, workdir: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server", "binary not on PATH")
        self.binary = binary
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._ping, 10, "redis-server to answer")

    def _ping(self) -> bool:
        """Our redis-server answers. Another test run's may hold the port (the port is free between
        free_port() and its bind, and while a test restarts it): that one answers with its own pid."""
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server on port {self.port} exited with {self.proc.returncode} "
                                 f"(port taken by another process?)")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"INFO server\r\n")
                reply = b""
                while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        return False
                    reply += chunk
                return f"process_id:{self.proc.pid}\r\n".encode() in reply
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self, down_for: float = 0.5) -> None:
        self.stop()
        time.sleep(down_for)  # an outage, not a blip: clients must notice and reconnect
        self.start()


class PostgresServer:
    """A throw-away PostgreSQL cluster of its own (initdb into a temp dir, its own port and socket
    directory), so a test may restart and stop it; never the shared server. initdb refuses to run
    as root: as root, the cluster belongs to the ``postgres`` user."""

    def __init__(self):
        binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
        initdb = shutil.which("initdb") or (str(binaries[-1]) if binaries else None)
        if initdb is None:
            unavailable("PostgreSQL server binaries (initdb, pg_ctl)", "not found")
        self.bin = Path(initdb).parent
        self.as_owner: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None or subprocess.run(["id", "postgres"], capture_output=True).returncode:
                unavailable("a non-root user to run initdb as", "no runuser or no postgres user")
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="trialflow-pg-"))
        self.data = self.dir / "data"
        if self.as_owner:
            shutil.chown(self.dir, "postgres", "postgres")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.as_owner, str(self.bin / tool), *args], capture_output=True, text=True, timeout=60)
        if done.returncode:
            raise AssertionError(f"{tool} {' '.join(args)} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def start(self) -> PostgresServer:
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        # Durability is the spool's business in these tests, not this throw-away server's.
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w", "-o", options, "start")
        return self

    def restart(self, mode: str = "fast") -> None:
        # (-l again: without it the server would write to, and hold open, pg_ctl's captured output)
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w", "-m", mode, "restart")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", mode, "stop")

    def destroy(self) -> None:
        subprocess.run([*self.as_owner, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


class TrialflowProcess:
    """`trialflow worker` or `trialflow beat` in its own process group (so SIGKILL takes its pool too)."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.args = args
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> TrialflowProcess:
        # Held open for the child's whole life: it writes its log there.
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([TRIALFLOW, *self.args], env=self.env, cwd=ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self, marker: str, timeout: float = 30) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.args[0]} exited with {self.proc.returncode}:\n{self.log()}")
            return marker in self.log()
        wait_for(ready, timeout, f"{self.args[0]} to log {marker!r}", interval=0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            self.proc.wait(15)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
        if self.proc and self.proc.poll() is None:
            self.kill(signal.SIGKILL)


def trialflow_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIALFLOW_")}
    if os.environ.get("TRIALFLOW_SPOOL_DIR"):  # the test's own spool (conftest), never the user's
        env["TRIALFLOW_SPOOL_DIR"] = os.environ["TRIALFLOW_SPOOL_DIR"]
    env.update({f"TRIALFLOW_{k.upper()}": str(v) for k, v in settings.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env
