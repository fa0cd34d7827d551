"""Summarize a py-spy raw profile (``py-spy record -f raw``): where the samples are.

    python -m bench.profile_summary PROFILE.txt [--top 40] [--match TEXT]

Prints, per function (``name (file)``), the share of samples in which it is on the
stack (inclusive) and on top of the stack (self), highest inclusive first.
``--match`` keeps only the stacks that contain TEXT (e.g. ``Ingestor.process``)
and gives shares of those.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def summarize(
    path: Path, match: str | None = None, lines: bool = False
) -> tuple[int, Counter[str], Counter[str]]:
    """(samples, inclusive count by function, self count by function)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        found = _LINE.match(line)
        if not found:
            continue
        stack, count = found.group(1), int(found.group(2))
        if match is not None and match not in stack:
            continue
        functions = []
        for frame in stack.split(";"):
            parts = None if lines else _FRAME.match(frame)
            functions.append(f"{parts.group(1)} ({parts.group(2)})" if parts else frame)
        total += count
        for function in set(functions):
            inclusive[function] += count
        own[functions[-1]] += count
    return total, inclusive, own


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_summary", description=__doc__)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--match")
    parser.add_argument("--lines", action="store_true", help="one entry per line, not function")
    args = parser.parse_args(argv)
    total, inclusive, own = summarize(args.profile, args.match, args.lines)
    print(f"{total} samples" + (f" with {args.match!r}" if args.match else ""))
    print(f"{'incl %':>7} {'self %':>7}  function")
    for function, count in inclusive.most_common(args.top):
        print(f"{100 * count / total:7.1f} {100 * own[function] / total:7.1f}  {function[:150]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
