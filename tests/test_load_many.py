"""Load: 50 estimates in one process do not grow memory beyond the first few runs
(no leaked graphs, tensors or caches). Measured in a fresh subprocess so the numbers
are clean; the test prints peak RSS (run with -s to see it)."""
import json
import subprocess
import sys
import textwrap

import pytest

RUNS, WARMUP = 50, 5
GROWTH_LIMIT_MB = 25.0

SCRIPT = textwrap.dedent(f"""
    import gc, json, resource, sys, tempfile
    import numpy as np, onnx, torch
    from onnx import helper, numpy_helper, TensorProto
    torch.set_num_threads(1)
    from lipcheck import api
    from lipcheck.graph import Graph

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20

    rng = np.random.default_rng(0)
    w = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), f"w{{i}}")
         for i, s in enumerate([(16, 32), (32, 32), (32, 10)])]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("MatMul", ["b", "w1"], ["c"]), helper.make_node("Tanh", ["c"], ["d"]),
             helper.make_node("MatMul", ["d", "w2"], ["y"])]
    g = helper.make_graph(nodes, "m",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], w)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]); m.ir_version = 8
    path = tempfile.mktemp(suffix=".onnx"); onnx.save(m, path)
    options = api.EstimateOptions(methods=("autolip",), lower_budget=0.02)
    values, rss = [], []
    for i in range({RUNS}):
        values.append(api.estimate(path, options=options).upper_bound.value)
        gc.collect()
        rss.append(rss_mb())
        if i == {WARMUP} - 1:
            peak_warm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    graphs = sum(isinstance(o, Graph) for o in gc.get_objects())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({{"rss": rss, "peak_warm_mb": peak_warm, "peak_mb": peak,
                      "graphs_alive": graphs, "distinct_values": len(set(values))}}))
""")


@pytest.mark.slow
def test_fifty_estimates_do_not_grow_memory():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    rss = data["rss"]
    print(f"\nRSS after run {WARMUP}: {rss[WARMUP - 1]:.1f} MB, "
          f"after run {RUNS}: {rss[-1]:.1f} MB; "
          f"peak RSS after {WARMUP} runs {data['peak_warm_mb']:.1f} MB, after {RUNS} "
          f"{data['peak_mb']:.1f} MB")
    assert data["graphs_alive"] == 0, "a Graph outlived its estimate"
    assert data["distinct_values"] == 1
    assert rss[-1] - rss[WARMUP - 1] < GROWTH_LIMIT_MB, rss
    assert data["peak_mb"] - data["peak_warm_mb"] < GROWTH_LIMIT_MB
