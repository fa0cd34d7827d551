"""``cpimon`` with tracemalloc on, for ``bench.soak --trace-heap``: is growth in the Python heap?

    python -m bench.traced_worker OUTPUT_DIR worker [cpimon options]

A daemon thread appends ``seconds traced_bytes`` to ``OUTPUT_DIR/heap.txt`` every
``CPIMON_SOAK_INTERVAL`` seconds (default 10), takes a snapshot once
``CPIMON_SOAK_WARMUP`` seconds have passed, and every 5 minutes after that writes the
20 source lines whose traced memory changed most since that snapshot to
``OUTPUT_DIR/heap-diff-SECONDS.txt``.  RSS that grows while the traced heap stays flat is
the allocator keeping freed memory, not a leak.  Tracing costs CPU: use it to diagnose,
not for the published figures.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path

from agents.cli import main as cpimon

DIFF_EVERY = 300.0


def _watch(output: Path, interval: float, warmup: float) -> None:
    started = time.monotonic()
    baseline: tracemalloc.Snapshot | None = None
    next_diff = warmup + DIFF_EVERY
    with open(output / "heap.txt", "a") as heap:
        while True:
            time.sleep(interval)
            elapsed = time.monotonic() - started
            heap.write(f"{elapsed:.0f} {tracemalloc.get_traced_memory()[0]}\n")
            heap.flush()
            if baseline is None and elapsed >= warmup:
                baseline = tracemalloc.take_snapshot()
            elif baseline is not None and elapsed >= next_diff:
                next_diff += DIFF_EVERY
                changes = tracemalloc.take_snapshot().compare_to(baseline, "lineno")[:20]
                text = "\n".join(str(change) for change in changes)
                (output / f"heap-diff-{elapsed:.0f}.txt").write_text(text + "\n")


def main() -> int:
    output = Path(sys.argv[1])
    interval = float(os.environ.get("CPIMON_SOAK_INTERVAL", "10"))
    warmup = float(os.environ.get("CPIMON_SOAK_WARMUP", "300"))
    tracemalloc.start()
    threading.Thread(target=_watch, args=(output, interval, warmup), daemon=True).start()
    return cpimon(sys.argv[2:])


if __name__ == "__main__":
    raise SystemExit(main())
