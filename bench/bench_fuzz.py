"""The network fuzz at 10^5 messages (tests/pipeline/test_pipeline_fuzz.py runs 10^4 in CI): a real `rtaa serve`
process, rtaa_cli.hostile's cases over ~7,000 connections while 3 legitimate calls stream through it.
Prints what the fuzz got (unexpected outcomes, hangs, crashes, tracebacks, the legitimate calls' bytes and
finals, log lines per connection) and the server's cost per hostile message against a baseline measured in
the same run: the same server taking the same number of messages from well-behaved connections.

    python bench/bench_fuzz.py                 # 7000 hostile connections (~10^5 messages)
    python bench/bench_fuzz.py --cases 1500    # quicker
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from helpers.fuzz import FuzzRun, fuzz_serve, metric  # noqa: E402
from rtaa_cli import hostile  # noqa: E402


def _summary(name: str, r: FuzzRun) -> dict:
    o = r.outcome
    at_provider: Counter = Counter()
    for conn in r.provider["connections"]:
        at_provider[conn.get("interaction")] += conn["audio_bytes"]
    legit_ok = sum(c.close_code == 1000 and at_provider[c.call_sid] == r.call_bytes
                   and any(t.is_final and t.text for t in c.transcripts) for c in r.legit)
    seen = Counter(o.by_outcome)
    seen["1003"] += seen.pop(hostile.ACCEPTED, 0)
    counted = all(metric(r.metrics, "rtaa_caller_closes_total", code=c) == seen[c] for c in ("1003", "1007", "1008", "1009"))
    tracebacks = sum("exc" in x or x.get("level") in ("error", "critical") for x in r.log_records)
    return {"run": name, "connections": o.connections, "messages": o.messages, "seconds": round(o.seconds, 2),
            "msg_per_s": round(o.messages / o.seconds), "unexpected": o.unexpected_count,
            "hangs": o.by_outcome.get("hang", 0), "alive": r.alive, "closes_counted": counted,
            "error_or_traceback_lines": tracebacks, "log_lines_per_connection": round(len(r.log_records) / o.connections, 2),
            "legit_whole": f"{legit_ok}/{len(r.legit)}", "duplicates": r.provider["totals"]["duplicates"],
            "calls_active_after": r.calls_active_after, "server_cpu_ms_per_1k_msgs": round(1e6 * r.cpu_s / o.messages, 1),
            "peak_rss_mb": round(r.peak_rss_mb, 1), "unexpected_sample": o.unexpected[:5]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=7000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    cases = list(hostile.cases(args.seed, args.cases))
    total = sum(len(c.messages) + 1 for c in cases)
    per = max(4, total // args.cases)
    with tempfile.TemporaryDirectory() as tmp:
        fuzz = asyncio.run(fuzz_serve(cases, Path(tmp) / "fuzz.log"))
        base = asyncio.run(fuzz_serve(list(hostile.valid_cases(args.cases, per)), Path(tmp) / "base.log"))
    rows = [_summary("hostile", fuzz), _summary("baseline (valid)", base)]
    for row in rows:
        print(row)
    ratio = rows[0]["server_cpu_ms_per_1k_msgs"] / rows[1]["server_cpu_ms_per_1k_msgs"]
    print(f"server CPU per message, hostile / valid: {ratio:.2f}x; "
          f"throughput hostile / valid: {rows[0]['msg_per_s'] / rows[1]['msg_per_s']:.2f}x")
    print("by kind:", {k: dict(v) for k, v in sorted(fuzz.outcome.by_kind.items())})


if __name__ == "__main__":
    main()
