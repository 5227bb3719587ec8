"""Where a process's CPU goes under load, from py-spy's samples (`make bench` with the `profile` part).

py-spy samples the running process from outside (no change to it, a few per cent of one core) and
writes each stack with its count; only stacks on the CPU are recorded, not waits. Two readings:
- self time by package: the package of the innermost frame (where the CPU was when sampled);
- our share: the samples with a frame of our own code (service/, jobs/) anywhere on the stack, that is
  what our code costs with what it calls.
"""

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

# Package of a frame, by the start of its file name (py-spy writes it relative to sys.path).
PACKAGES = (
    ("ours", ("service/", "jobs/")),
    ("starlette", ("starlette/",)),
    ("uvicorn, httptools", ("uvicorn/", "httptools/", "h11/")),
    ("asyncpg, databases, sqlalchemy", ("asyncpg/", "databases/", "sqlalchemy/")),
    ("redis-py, arq", ("redis/", "arq/")),
    ("pydantic", ("pydantic/", "pydantic_core/")),
    ("jwt, cryptography", ("jwt/", "cryptography/")),
    ("logging, json", ("logging/", "json/")),
    ("asyncio, uvloop", ("asyncio/", "uvloop/")),
)
FRAME = re.compile(r"\(([^:()]+):\d+\)$")


def record(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    """Start sampling the process for this many seconds; its samples go to out (py-spy's raw format)."""
    argv = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--duration", str(seconds)]
    argv += ["--rate", "200", "--nonblocking", "--format", "raw", "--output", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def package(frame: str) -> str:
    found = FRAME.search(frame)
    path = found.group(1) if found else ""
    return next((name for name, prefixes in PACKAGES if path.startswith(prefixes)), "other")


def shares(raw: Path) -> tuple[Counter[str], float]:
    """Self time by package (share of samples), and the share of samples that ran through our code."""
    by_package: Counter[str] = Counter()
    ours = total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        frames = stack.split(";")
        by_package[package(frames[-1])] += samples
        ours += samples if any(package(frame) == "ours" for frame in frames) else 0
        total += samples
    total = total or 1
    return Counter({name: n / total for name, n in by_package.items()}), ours / total


def summary(raw: Path) -> str:
    """One line: our share, then self time by package, largest first."""
    by_package, ours = shares(raw)
    parts = ", ".join(f"{name} {share:.0%}" for name, share in by_package.most_common())
    return f"through our code {ours:.0%} of CPU samples; self time: {parts}"
