"""Ranges over several `make bench` runs: each figure's min-max over every value the runs recorded.

    BENCH_RAW=/tmp/run1.json make bench   # ... three times, on a fresh clone
    python -m tests.bench.ranges /tmp/run1.json /tmp/run2.json /tmp/run3.json

Each run writes its figures (docs/benchmarks.json unless BENCH_RAW says where); a figure measured in
turns within a run (the HTTP ones, BENCH_REPEATS times) holds a value per turn, so its range covers
every turn of every run. Ratios are taken turn by turn, against the baseline measured just before.
"""

import json
import sys
from pathlib import Path


def ranges(paths: list[Path]) -> dict[str, tuple[float, float, int]]:
    """name -> (min, max, how many values), over all the runs."""
    values: dict[str, list[float]] = {}
    for path in paths:
        for name, found in json.loads(path.read_text())["figures"].items():
            values.setdefault(name, []).extend(found)
    return {name: (min(found), max(found), len(found)) for name, found in values.items()}


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def main() -> None:
    paths = [Path(argument) for argument in sys.argv[1:]]
    if not paths:
        sys.exit("usage: python -m tests.bench.ranges RUN.json [RUN.json ...]")
    dates = ", ".join(json.loads(path.read_text())["date"] for path in paths)
    print(f"{len(paths)} runs ({dates})\n\n| figure | min-max | values |\n|---|---|---|")
    for name, (low, high, count) in sorted(ranges(paths).items()):
        span = _number(low) if _number(low) == _number(high) else f"{_number(low)}-{_number(high)}"
        print(f"| {name} | {span} | {count} |")


if __name__ == "__main__":
    main()
