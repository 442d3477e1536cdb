"""Summarise py-spy raw stacks (``py-spy record -f raw``, e.g. from ``bench_pipeline.py --profile``):
the share of samples per function, inclusive (on the stack) and self (the leaf), idle time apart.

    python bench/pyspy_summary.py /tmp/prof/rtaa-200.txt --top 30
"""
from __future__ import annotations

import argparse
import re
from collections import Counter

IDLE = ("select (selectors.py", "_run_once (asyncio/base_events.py")  # the loop waiting: a leaf here is idle


def _name(frame: str) -> str:
    """'send (websockets/legacy/protocol.py:635)' -> 'send (websockets/legacy/protocol.py)' (lines merged)."""
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame.strip())
    if not m:
        return frame.strip()
    path = m.group(2)
    for marker in ("site-packages/", "python3.11/", "rtaa_cli/"):
        if marker in path:
            path = ("rtaa_cli/" if marker == "rtaa_cli/" else "") + path.split(marker, 1)[1]
    return f"{m.group(1)} ({path})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("raw")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    incl: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = idle = 0
    with open(a.raw) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(n)
            frames = [_name(x) for x in stack.split(";")]
            total += count
            if frames[-1].startswith(IDLE[0]) or (len(frames) > 0 and frames[-1].startswith(IDLE[1])):
                idle += count
                continue
            leaf[frames[-1]] += count
            for fr in set(frames):
                incl[fr] += count
    busy = total - idle
    print(f"{total} samples, {idle} idle ({100 * idle / max(total, 1):.1f} %), {busy} busy; shares below are of busy")
    print(f"\n{'inclusive %':>11}  function")
    for fr, c in incl.most_common(a.top):
        print(f"{100 * c / max(busy, 1):>10.1f}  {fr}")
    print(f"\n{'self %':>11}  function")
    for fr, c in leaf.most_common(a.top):
        print(f"{100 * c / max(busy, 1):>10.1f}  {fr}")


if __name__ == "__main__":
    main()
