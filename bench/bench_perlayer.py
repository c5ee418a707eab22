"""Issue 12 item 4: the per-layer phase alone (bound_nodes, default Settings, one thread) on
the target networks, seconds by op kind and the phase's peak resident memory above the
model's, each model in a fresh process. With --before DIR (another checkout) the runs
alternate before / after, `--repeat` times each, and the fastest of each is reported: on a
shared box the load drifts by 2x within minutes, less between neighbouring runs.

Run: .venv/bin/python bench/bench_perlayer.py [--before DIR] [--repeat N] [name ...]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ONE = r'''
import json, sys, time
import torch
torch.set_num_threads(1)
sys.path.insert(0, "bench")
from archs import NETS
from lipcheck.api import load
from lipcheck.estimators.upper.autolip import bound_nodes
from lipcheck.passes import fuse_batchnorm
from lipcheck.settings import Settings

def status(key):
    line = next(l for l in open("/proc/self/status") if l.startswith(key))
    return int(line.split()[1]) / 2**20
build, shape = NETS[sys.argv[1]]
graph = fuse_batchnorm(load(build(), [shape], share_weights=True))
base = status("VmRSS")
try:
    open("/proc/self/clear_refs", "w").write("5")
except OSError:
    pass
kinds, last = {}, [time.perf_counter()]
def tick(node):
    now = time.perf_counter()
    kinds[node.op.value] = kinds.get(node.op.value, 0.0) + now - last[0]
    last[0] = now
start = time.perf_counter()
bounds = bound_nodes(graph, Settings(), tick)
total = time.perf_counter() - start
values = {k: b.value for k, b in bounds.items()}
print(json.dumps({"total": total, "kinds": kinds, "extra_gb": status("VmHWM") - base,
                  "values": values}))
'''
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
ROOT = Path(__file__).resolve().parents[1]


def run(name: str, code: Path) -> dict:
    env = {**os.environ, **{v: "1" for v in THREAD_VARS}, "PYTHONPATH": str(code)}
    done = subprocess.run([sys.executable, "-P", "-c", ONE, name], capture_output=True,
                          text=True, env=env, cwd=ROOT, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["load"] = float(Path("/proc/loadavg").read_text().split()[0])
    return out


def show(label: str, runs: list[dict]) -> dict:
    best = min(runs, key=lambda r: r["total"])
    kinds = " ".join(f"{k}={v:.2f}" for k, v in sorted(best["kinds"].items(), key=lambda i: -i[1])
                     if v >= 0.05)
    times = "/".join(f"{r['total']:.2f}" for r in runs)
    print(f"{label:18s} {best['total']:7.2f} s (runs {times}, load {best['load']:.1f})  "
          f"+{best['extra_gb']:.2f} GB  {kinds}", flush=True)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("names", nargs="*", default=["resnet18", "resnet50", "vgg11"])
    parser.add_argument("--before", type=Path)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    for name in args.names:
        codes = ([("before", args.before)] if args.before else []) + [("after", ROOT)]
        runs: dict[str, list[dict]] = {label: [] for label, _ in codes}
        for _ in range(args.repeat):
            for label, code in codes:
                runs[label].append(run(name, code))
        best = {label: show(f"{name} {label}", runs[label]) for label, _ in codes}
        if args.before:
            old, new = best["before"]["values"], best["after"]["values"]
            ratios = [new[k] / old[k] for k in old if old[k] and k in new]
            speed = best["after"]["total"] / best["before"]["total"]
            print(f"{'':18s} after/before time {speed:.2f}; "
                  f"bound ratios after/before: min {min(ratios):.8f} max {max(ratios):.8f}")


if __name__ == "__main__":
    main()
