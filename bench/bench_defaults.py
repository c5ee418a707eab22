"""Issue 12 item 2: the default `lipcheck estimate` end to end on the target networks,
one process each (peak memory is per model), with the report's phase timings and the
peak resident memory of each phase (VmHWM, reset at each phase start; Linux).

Run: .venv/bin/python bench/bench_defaults.py [--before DIR] [name ...]   (names:
bench/archs.py NETS, or paths to model files such as models/*.onnx and LipSDP's nets).
With --before DIR (another checkout, e.g. a `git worktree` of main) each model runs first
with DIR's lipcheck, then with this one: a before/after table from one run, where the
box's load drifts less between the two than between two runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ONE = r'''
import json, sys, time
import torch
torch.set_num_threads(1)
sys.path.insert(0, "bench")
from archs import NETS
from lipcheck.api import estimate

peaks, phase = {}, ["start"]   # peak RSS (GB) per phase: VmHWM, reset at each phase start
def hwm():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    return int(line.split()[1]) / 2**20
def on_phase(name, count=None):
    peaks[phase[0]] = max(peaks.get(phase[0], 0.0), hwm())
    try:
        open("/proc/self/clear_refs", "w").write("5")
    except OSError:
        pass   # no reset: each phase shows the peak so far
    phase[0] = name

name = sys.argv[1]
start = time.perf_counter()
if name in NETS:
    build, shape = NETS[name]
    model = build()
    on_phase("model built")
    report = estimate(model, [shape], on_phase=on_phase)
else:
    report = estimate(name, on_phase=on_phase)
total = time.perf_counter() - start
on_phase("end")
lower = report.lower_bound.value if report.lower_bound else None
upper = report.upper_bound.value if report.upper_bound else None
print(json.dumps({"total": total, "rss_gb": max(peaks.values()), "peaks": peaks,
                  "timings": report.timings, "lower": lower, "upper": upper}))
'''


THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def main(names: list[str], before: str | None = None) -> None:
    from archs import NETS
    names = names or list(NETS)
    print(f"{'model':22s} {'total s':>8s} {'peak GB':>8s}  {'lower':>10s} {'upper':>10s}  "
          "phases (s)")
    here = str(Path(__file__).resolve().parents[1])
    for name in names:
        for label, code in ([("before", before)] if before else []) + [("", here)]:
            run_one(name, code, f"{name} {label}".strip())


def run_one(name: str, code: str, label: str) -> None:
    """One model in a fresh process with the lipcheck found at `code`."""
    load = Path("/proc/loadavg").read_text().split()[0]
    start = time.perf_counter()
    env = {**os.environ, **{v: "1" for v in THREAD_VARS}}   # one thread, as the CLI sets
    env["PYTHONPATH"] = os.pathsep.join([code, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run([sys.executable, "-P", "-c", ONE, name], capture_output=True, text=True,
                          env=env, cwd=str(Path(__file__).resolve().parents[1]))
    if done.returncode:
        print(f"{label:22s} failed after {time.perf_counter() - start:.1f} s: "
              f"{done.stderr.strip().splitlines()[-1:]}")
        return
    r = json.loads(done.stdout.strip().splitlines()[-1])
    phases = " ".join(f"{k}={v:.2f}" for k, v in r["timings"].items())
    fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    print(f"{label:22s} {r['total']:8.1f} {r['rss_gb']:8.2f}  {fmt(r['lower']):>10s} "
          f"{fmt(r['upper']):>10s}  {phases} [load {load}]", flush=True)
    peaks = ", ".join(f"{k} {v:.2f}" for k, v in r["peaks"].items() if k != "start")
    print(f"{'':22s} peak GB by phase: {peaks}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    args = sys.argv[1:]
    previous = None
    if args[:1] == ["--before"]:
        previous, args = args[1], args[2:]
    main(args, previous)
