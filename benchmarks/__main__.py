"""Run the benchmarks: `python -m benchmarks [NAME ...]` (default: all). Names: pipeline, webhook, serving, rl, monitoring, hostile, operator."""

from __future__ import annotations

import importlib
import sys
import time

ENTRIES = {
    "pipeline": "benchmarks.bench_pipeline",
    "webhook": "benchmarks.bench_webhook",
    "serving": "benchmarks.bench_serving",
    "rl": "benchmarks.bench_rl",
    "monitoring": "benchmarks.bench_monitoring",
    "hostile": "benchmarks.bench_hostile",
    "operator": "benchmarks.bench_operator",
}


def main(argv: list[str]) -> int:
    names = argv or list(ENTRIES)
    unknown = [n for n in names if n not in ENTRIES]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(ENTRIES)}", file=sys.stderr)
        return 2
    for name in names:
        try:
            module = importlib.import_module(ENTRIES[name])
        except ModuleNotFoundError as exc:
            print(f"== {name}: not available ({exc.name})")
            continue
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        module.main()
        print(f"   ({time.perf_counter() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
