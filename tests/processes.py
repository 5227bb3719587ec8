"""Helpers for tests that drive the service as real processes over real sockets."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

PROJECT_DIR = Path(__file__).resolve().parent.parent
CONFIG_VARIABLES = ("DATABASE_URL", "REDIS_URL", "JWT_SECRET", "EMBEDDED_SERVERS", "DATA_DIR", "PORT", "SMTP_PORT")


def clean_env(**overrides: str) -> dict[str, str]:
    """This environment without the service's own settings, plus overrides."""
    env = {key: value for key, value in os.environ.items() if key not in CONFIG_VARIABLES}
    return {**env, **overrides}


@dataclass
class Proc:
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pgid(self) -> int:
        return self.process.pid  # started as the leader of its own group

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signum)

    def group_alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        return True

    def wait_group_gone(self, timeout: float) -> float:
        """Seconds until no process of the group is left; raises if some outlive timeout."""
        start = time.monotonic()
        while self.group_alive():
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(0.05)  # reap the leader, else it lingers as a zombie of ours
            if time.monotonic() - start > timeout:
                raise AssertionError(f"processes left after {timeout}s:\n{group_members(self.pgid)}")
        return time.monotonic() - start


def group_members(pgid: int) -> str:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry.name)) == pgid:
                    lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
    return "\n".join(lines)


def start(argv: list[str], env: dict[str, str], log: Path) -> Proc:
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv, cwd=PROJECT_DIR, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return Proc(process, log)


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def wait_http(url: str, proc: Proc, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise AssertionError(f"exited with {proc.process.returncode}:\n{proc.output()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout}s:\n{proc.output()}")


@contextlib.contextmanager
def stopped_at_exit(proc: Proc) -> Iterator[Proc]:
    try:
        yield proc
    finally:
        if proc.group_alive():
            proc.signal_group(signal.SIGKILL)
            proc.wait_group_gone(10)


def process_tree(pid: int) -> list[int]:
    """pid and every process below it (a PostgreSQL server: the postmaster and its backends)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """SIGSTOP a server and everything it started, as a stalled host or a full-GC pause would; SIGCONT after."""
    stopped = process_tree(pid)
    for member in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGSTOP)
    try:
        yield
    finally:
        for member in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGCONT)
