"""load_onnx + run_graph against onnxruntime on one-node and small models, and the
loader's error cases."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper
from onnx_builders import const, ints, model, one_node, save

from lipcheck.errors import (
    BadWeightsError,
    ModelLoadError,
    ShapeError,
    UnsafeFileError,
    UnsupportedOpsError,
)
from lipcheck.graph import OpKind
from lipcheck.interpreter import run_graph
from lipcheck.loaders.onnx_loader import load_onnx

X4 = (1, 3, 8, 8)


def _feeds(m: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in m.graph.input:
        if i.name in {t.name for t in m.graph.initializer}:
            continue
        shape = [d.dim_value or 1 for d in i.type.tensor_type.shape.dim]
        out[i.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def check(m: onnx.ModelProto, tmp_path: Path, atol: float = 1e-5):
    """Run the model in lipcheck and in onnxruntime; return the lipcheck graph."""
    path = save(m, tmp_path)
    graph = load_onnx(path)
    feeds = _feeds(m)
    ours = run_graph(graph, {k: torch.from_numpy(v) for k, v in feeds.items()})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(None, feeds)
    for name, expected in zip(graph.outputs, theirs, strict=True):
        got = ours[name].detach().double().numpy()
        assert got.shape == expected.shape, name
        np.testing.assert_allclose(got, expected.astype(np.float64), atol=atol, rtol=1e-5,
                                   equal_nan=True, err_msg=name)
    for node in graph.nodes:
        assert node.output_shapes and node.input_shapes, node.name
    return graph


W = np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)
CASES = {
    "gemm": lambda: one_node("Gemm", (2, 5), [const("b", np.ones((3, 5)) * 0.3),
                                               const("c", [1.0, 2.0, 3.0])],
                             extra_inputs=["b", "c"], transB=1, alpha=0.5, beta=2.0),
    "matmul": lambda: one_node("MatMul", (2, 5), [const("w", np.eye(5, 3))], extra_inputs=["w"]),
    "conv_same_upper": lambda: one_node("Conv", X4, [const("w", W)], extra_inputs=["w"],
                                        auto_pad="SAME_UPPER", strides=[2, 2]),
    "conv_same_lower": lambda: one_node("Conv", (1, 3, 7, 7), [const("w", W)],
                                        extra_inputs=["w"], auto_pad="SAME_LOWER",
                                        strides=[2, 2]),
    "conv_asym_pads": lambda: one_node("Conv", X4, [const("w", W), const("b", [1, 2, 3, 4])],
                                       extra_inputs=["w", "b"], pads=[0, 1, 2, 0],
                                       dilations=[2, 1]),
    "conv_transpose_output_shape": lambda: one_node(
        "ConvTranspose", (1, 4, 5, 5), [const("w", W)], extra_inputs=["w"], strides=[2, 2],
        output_shape=[10, 10]),
    "conv_transpose_same": lambda: one_node("ConvTranspose", (1, 4, 5, 5), [const("w", W)],
                                            extra_inputs=["w"], strides=[2, 2],
                                            auto_pad="SAME_UPPER"),
    "relu": lambda: one_node("Relu", X4),
    "leaky": lambda: one_node("LeakyRelu", X4, alpha=0.2),
    "prelu": lambda: one_node("PRelu", X4, [const("s", np.full((3, 1, 1), 0.1))],
                              extra_inputs=["s"]),
    "maxpool_ceil": lambda: one_node("MaxPool", (1, 2, 9, 9), kernel_shape=[3, 3],
                                     strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
    "maxpool_dilated": lambda: one_node("MaxPool", (1, 2, 9, 9), kernel_shape=[2, 2],
                                        dilations=[2, 2]),
    "maxpool_same_lower": lambda: one_node("MaxPool", (1, 2, 9, 9), kernel_shape=[2, 2],
                                           strides=[2, 2], auto_pad="SAME_LOWER"),
    "avgpool_include_pad": lambda: one_node("AveragePool", (1, 2, 9, 9), kernel_shape=[3, 3],
                                            strides=[2, 2], pads=[1, 1, 1, 1],
                                            count_include_pad=1),
    "avgpool_exclude_pad_ceil": lambda: one_node("AveragePool", (1, 2, 8, 8),
                                                 kernel_shape=[3, 3], strides=[2, 2],
                                                 pads=[1, 1, 1, 1], ceil_mode=1),
    "avgpool_1d": lambda: one_node("AveragePool", (1, 2, 10), kernel_shape=[4], strides=[3]),
    "lppool": lambda: one_node("LpPool", (1, 2, 8, 8), kernel_shape=[2, 2], strides=[2, 2], p=2),
    "global_avg": lambda: one_node("GlobalAveragePool", X4),
    "global_max": lambda: one_node("GlobalMaxPool", X4),
    "flatten": lambda: one_node("Flatten", X4, axis=2),
    "reshape": lambda: one_node("Reshape", X4, [ints("s", [0, -1, 4])], extra_inputs=["s"]),
    "transpose": lambda: one_node("Transpose", X4, perm=[0, 2, 3, 1]),
    "squeeze_11": lambda: one_node("Squeeze", (1, 3, 1, 4), opset=11, axes=[2]),
    "squeeze_13": lambda: one_node("Squeeze", (1, 3, 1, 4), [ints("a", [0, -2])], opset=13,
                                   extra_inputs=["a"]),
    "unsqueeze_11": lambda: one_node("Unsqueeze", (3, 4), opset=11, axes=[0, 3]),
    "unsqueeze_13": lambda: one_node("Unsqueeze", (3, 4), [ints("a", [1, -1])], opset=13,
                                     extra_inputs=["a"]),
    "identity": lambda: one_node("Identity", X4),
    "dropout_12": lambda: one_node("Dropout", X4, opset=12),
    "dropout_7": lambda: one_node("Dropout", X4, opset=7, ratio=0.3),
    "pad_11_constant": lambda: one_node("Pad", X4, [ints("p", [0, 0, 1, 2, 0, 0, 3, -1]),
                                                    const("v", 1.5)], opset=11,
                                        extra_inputs=["p", "v"]),
    "pad_11_reflect": lambda: one_node("Pad", X4, [ints("p", [0, 0, 2, 1, 0, 0, 1, 3])],
                                       opset=11, extra_inputs=["p"], mode="reflect"),
    "pad_11_edge": lambda: one_node("Pad", X4, [ints("p", [0, 0, 2, 1, 0, 0, 1, 3])], opset=11,
                                    extra_inputs=["p"], mode="edge"),
    "pad_2_attr": lambda: one_node("Pad", X4, opset=9, pads=[0, 0, 1, 1, 0, 0, 1, 1],
                                   value=2.0),
    "pad_18_axes": lambda: one_node("Pad", X4, [ints("p", [1, 2, 3, 0]), const("v", 0.5),
                                                ints("a", [2, 3])], opset=18,
                                    extra_inputs=["p", "v", "a"]),
    "pad_19_wrap": lambda: one_node("Pad", X4, [ints("p", [0, 0, 2, 3, 0, 0, 1, 2])], opset=19,
                                    extra_inputs=["p"], mode="wrap"),
    "resize_nearest_scales": lambda: one_node(
        "Resize", (1, 2, 5, 5), [const("s", [1, 1, 1.5, 2.0])], opset=13,
        extra_inputs=["", "s"], mode="nearest"),
    "resize_nearest_sizes_ceil": lambda: one_node(
        "Resize", (1, 2, 5, 5), [ints("z", [1, 2, 7, 3])], opset=13,
        extra_inputs=["", "", "z"], mode="nearest", nearest_mode="ceil",
        coordinate_transformation_mode="asymmetric"),
    "resize_linear_half_pixel": lambda: one_node(
        "Resize", (1, 2, 5, 5), [const("s", [1, 1, 2.0, 1.5])], opset=13,
        extra_inputs=["", "s"], mode="linear"),
    "resize_linear_align": lambda: one_node(
        "Resize", (1, 2, 5, 5), [ints("z", [1, 2, 9, 4])], opset=13, extra_inputs=["", "", "z"],
        mode="linear", coordinate_transformation_mode="align_corners"),
    "resize_linear_pytorch": lambda: one_node(
        "Resize", (1, 2, 5, 5), [ints("z", [1, 2, 3, 8])], opset=13, extra_inputs=["", "", "z"],
        mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
    "resize_10": lambda: one_node("Resize", (1, 2, 4, 4), [const("s", [1, 1, 2, 2])], opset=10,
                                  extra_inputs=["s"]),
    "upsample_9": lambda: one_node("Upsample", (1, 2, 4, 4), [const("s", [1, 1, 2, 3])],
                                   opset=9, extra_inputs=["s"]),
    "split_13": lambda: one_node("Split", (2, 6), [ints("s", [1, 5])], opset=13,
                                 extra_inputs=["s"], outputs=2, axis=1),
    "split_11": lambda: one_node("Split", (2, 6), opset=11, outputs=3, axis=1),
    "split_18": lambda: one_node("Split", (2, 7), opset=18, outputs=3, axis=1, num_outputs=3),
    "slice_9": lambda: one_node("Slice", X4, opset=9, starts=[1, 2], ends=[3, 100], axes=[1, 3]),
    "slice_13_negative_step": lambda: one_node(
        "Slice", X4, [ints("s", [-1, 6]), ints("e", [-100, 1]), ints("a", [2, 3]),
                      ints("t", [-2, -1])], opset=13, extra_inputs=["s", "e", "a", "t"]),
    "gather_repeated": lambda: one_node("Gather", (5, 3), [ints("i", [[0, 4], [-1, 2]])],
                                        extra_inputs=["i"], axis=0),
    "gather_scalar": lambda: one_node("Gather", (5, 3), [ints("i", 1)], extra_inputs=["i"],
                                      axis=1),
    "expand": lambda: one_node("Expand", (3, 1), [ints("s", [2, 3, 4])], extra_inputs=["s"]),
    "tile": lambda: one_node("Tile", (2, 3), [ints("r", [2, 3])], extra_inputs=["r"]),
    "depth_to_space_dcr": lambda: one_node("DepthToSpace", (1, 8, 2, 3), blocksize=2),
    "depth_to_space_crd": lambda: one_node("DepthToSpace", (1, 8, 2, 3), blocksize=2,
                                           mode="CRD"),
    "space_to_depth": lambda: one_node("SpaceToDepth", (1, 2, 4, 6), blocksize=2),
    "add_broadcast_const": lambda: one_node("Add", X4, [const("c", np.ones((3, 1, 1)))],
                                            extra_inputs=["c"]),
    "mul_const": lambda: one_node("Mul", X4, [const("c", [2.0])], extra_inputs=["c"]),
    "div_const": lambda: one_node("Div", X4, [const("c", [4.0])], extra_inputs=["c"]),
    "sub_const_first": lambda: model([helper.make_node("Sub", ["c", "x"], ["y"])],
                                     {"x": X4}, ["y"], [const("c", 1.0)]),
    "softmax_11_axis1": lambda: one_node("Softmax", (2, 3, 4), opset=11, axis=1),
    "softmax_13": lambda: one_node("Softmax", (2, 3, 4), opset=13, axis=1),
    "log_softmax_11": lambda: one_node("LogSoftmax", (2, 3, 4), opset=11),
    "reduce_mean_13": lambda: one_node("ReduceMean", X4, opset=13, axes=[2, 3], keepdims=0),
    "reduce_mean_18": lambda: one_node("ReduceMean", X4, [ints("a", [1])], opset=18,
                                       extra_inputs=["a"]),
    "reduce_sum_13": lambda: one_node("ReduceSum", X4, [ints("a", [-1])], opset=13,
                                      extra_inputs=["a"], keepdims=0),
    "reduce_sum_all": lambda: one_node("ReduceSum", X4, opset=13),
    "reduce_max": lambda: one_node("ReduceMax", X4, opset=13, axes=[1]),
    "reduce_min": lambda: one_node("ReduceMin", X4, opset=13, axes=[1, 2], keepdims=0),
    "reduce_l2": lambda: one_node("ReduceL2", X4, opset=13, axes=[3]),
    "exp": lambda: one_node("Exp", X4),
    "log": lambda: one_node("Log", X4),
    "sqrt": lambda: one_node("Sqrt", X4),
    "reciprocal": lambda: one_node("Reciprocal", X4),
    "pow": lambda: one_node("Pow", X4, [const("e", 2.0)], extra_inputs=["e"]),
    "layer_norm": lambda: one_node("LayerNormalization", (2, 3, 4), [const("g", [1, 2, 3, 4]),
                                                                     const("b", [0, 1, 0, 1])],
                                   extra_inputs=["g", "b"], axis=-1),
    "instance_norm": lambda: one_node("InstanceNormalization", X4, [const("g", [1, 2, 3]),
                                                                    const("b", [0, 1, 0])],
                                      extra_inputs=["g", "b"]),
    "lrn_odd": lambda: one_node("LRN", (1, 6, 3, 3), size=3, alpha=0.1, beta=0.75, bias=2.0),
    "clip_6": lambda: one_node("Clip", X4, opset=6, min=-0.5, max=0.5),
    "clip_11": lambda: one_node("Clip", X4, [const("lo", 0.0), const("hi", 6.0)], opset=11,
                                extra_inputs=["lo", "hi"]),
    "clip_13_max_only": lambda: one_node("Clip", X4, [const("hi", 0.3)], opset=13,
                                         extra_inputs=["", "hi"]),
    "batchnorm_9": lambda: one_node("BatchNormalization", X4,
                                    [const(n, v) for n, v in [("s", [1, 2, 3]), ("b", [0, 1, 2]),
                                                              ("m", [0.1, 0.2, 0.3]),
                                                              ("v", [1, 2, 0.5])]],
                                    opset=9, extra_inputs=["s", "b", "m", "v"], epsilon=1e-3),
    "batchnorm_15": lambda: one_node("BatchNormalization", X4,
                                     [const(n, v) for n, v in [("s", [1, 2, 3]), ("b", [0, 1, 2]),
                                                               ("m", [0.1, 0.2, 0.3]),
                                                               ("v", [1, 2, 0.5])]],
                                     opset=15, extra_inputs=["s", "b", "m", "v"]),
    "cast_double": lambda: model([helper.make_node("Cast", ["x"], ["y"], to=11)], {"x": X4},
                                 [], outputs_double=["y"]),
    "cast_like_15": lambda: model([helper.make_node("CastLike", ["x", "t"], ["y"])], {"x": X4},
                                  ["y"], [const("t", [1.0])]),
    "gelu_20": lambda: one_node("Gelu", X4, opset=20),
    "hardswish": lambda: one_node("HardSwish", X4, opset=14),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_onnxruntime(case: str, tmp_path: Path) -> None:
    check(CASES[case](), tmp_path)


def test_lrn_even_size_matches_spec_formula(tmp_path: Path) -> None:
    # onnxruntime refuses an even size (and onnx's reference evaluator only fills channel 0),
    # so compare with the spec's formula written out as loops
    size, alpha, beta, bias = 4, 0.5, 0.75, 1.5
    graph = load_onnx(save(one_node("LRN", (1, 6, 3, 3), size=size, alpha=alpha, beta=beta,
                                    bias=bias), tmp_path))
    x = torch.randn(1, 6, 3, 3, dtype=torch.float64)
    got = run_graph(graph, {"x": x})["y0"]
    expected = torch.empty_like(x)
    for c in range(6):
        lo, hi = max(0, c - (size - 1) // 2), min(5, c + -(-(size - 1) // 2))
        square = (x[:, lo:hi + 1] ** 2).sum(dim=1)
        expected[:, c] = x[:, c] / (bias + alpha / size * square) ** beta
    torch.testing.assert_close(got, expected)


def _two_inputs(op: str, n: int = 2, shapes=((2, 3), (2, 3)), **attrs) -> onnx.ModelProto:
    names = [f"x{i}" for i in range(n)]
    node = helper.make_node(op, names, ["y"], **attrs)
    return model([node], dict(zip(names, shapes, strict=True)), ["y"])


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Sum", "Mean", "Max", "Min",
                                "Concat"])
def test_two_dynamic_inputs(op: str, tmp_path: Path) -> None:
    attrs = {"axis": 1} if op == "Concat" else {}
    check(_two_inputs(op, shapes=((2, 3), (2, 3) if op != "Add" else (1, 3)), **attrs), tmp_path)


def test_shape_subgraph_folds_into_reshape(tmp_path: Path) -> None:
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    m = model(nodes, {"x": X4}, ["y"], [ints("zero", 0), ints("axes", [0]),
                                        ints("minus1", [-1])], opset=13)
    graph = check(m, tmp_path)
    assert [n.op for n in graph.nodes] == [OpKind.RESHAPE]
    assert graph.nodes[0].attrs["shape"] == [1, 192]


def _gelu_nodes(order: str) -> list[onnx.NodeProto]:
    head = [helper.make_node("Div", ["x", "sqrt2"], ["d"]),
            helper.make_node("Erf", ["d"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["a"])]
    if order == "x_then_half":
        return head + [helper.make_node("Mul", ["x", "a"], ["m"]),
                       helper.make_node("Mul", ["m", "half"], ["y"])]
    return [helper.make_node("Mul", ["x", "half"], ["h"])] + head + [
        helper.make_node("Mul", ["h", "a"], ["y"])]


@pytest.mark.parametrize("order", ["x_then_half", "half_first"])
def test_gelu_erf_pattern_fuses(order: str, tmp_path: Path) -> None:
    m = model(_gelu_nodes(order), {"x": (2, 5)}, ["y"],
              [const("sqrt2", np.sqrt(2.0)), const("one", 1.0), const("half", 0.5)])
    graph = check(m, tmp_path)
    assert [n.op for n in graph.nodes] == [OpKind.GELU]
    assert graph.constants == {}


def test_gelu_not_fused_when_intermediate_is_reused(tmp_path: Path) -> None:
    nodes = _gelu_nodes("x_then_half") + [helper.make_node("Relu", ["e"], ["z"])]
    m = model(nodes, {"x": (2, 5)}, ["y", "z"],
              [const("sqrt2", np.sqrt(2.0)), const("one", 1.0), const("half", 0.5)])
    graph = check(m, tmp_path)
    assert OpKind.GELU not in [n.op for n in graph.nodes]


@pytest.mark.parametrize("gate, fused", [("Sigmoid", OpKind.SILU), ("HardSigmoid",
                                                                    OpKind.HARD_SWISH)])
def test_gated_activations_fuse(gate: str, fused: OpKind, tmp_path: Path) -> None:
    attrs = {"alpha": 1 / 6, "beta": 0.5} if gate == "HardSigmoid" else {}
    nodes = [helper.make_node(gate, ["x"], ["s"], **attrs), helper.make_node("Mul", ["s", "x"],
                                                                             ["y"])]
    graph = check(model(nodes, {"x": (2, 5)}, ["y"]), tmp_path)
    assert [n.op for n in graph.nodes] == [fused]


def test_metadata_and_names(tmp_path: Path) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y"],
                                                                      name="second")]
    path = save(model(nodes, {"x": ("batch", 3)}, ["y"], opset=13), tmp_path)
    graph = load_onnx(path)
    assert [n.name for n in graph.nodes] == ["Relu_0", "second"]
    assert graph.inputs[0].shape == (1, 3)
    meta = graph.metadata
    assert meta["format"] == "onnx" and meta["opset"] == 13 and len(meta["sha256"]) == 64
    assert meta["input_shape"] == [[1, 3]] and meta["producer"] == "lipcheck-tests"
    assert [c for c, _ in meta["warnings"]] == ["dynamic_batch"]


# --- errors ---------------------------------------------------------------------------

def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        load_onnx(tmp_path / "nope.onnx")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="directory"):
        load_onnx(tmp_path)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelLoadError):
        load_onnx(path)


def test_truncated_model(tmp_path: Path) -> None:
    path = save(one_node("Conv", X4, [const("w", W)], extra_inputs=["w"]), tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError):
        load_onnx(path)


@pytest.mark.parametrize("location", ["/etc/passwd", "../outside.bin", "link.bin"])
def test_external_data_outside_folder(location: str, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\0" * 64)
    os.symlink(tmp_path / "outside.bin", folder / "link.bin")
    m = one_node("MatMul", (2, 4), [const("w", np.ones((4, 4)))], extra_inputs=["w"])
    w = m.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    entry = w.external_data.add()
    entry.key, entry.value = "location", location
    with pytest.raises(UnsafeFileError):
        load_onnx(save(m, folder))


def test_external_data_inside_folder_loads(tmp_path: Path) -> None:
    m = one_node("MatMul", (2, 4), [const("w", np.arange(16).reshape(4, 4))],
                 extra_inputs=["w"])
    onnx.save(m, str(tmp_path / "model.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    graph = load_onnx(tmp_path / "model.onnx")
    assert graph.constants["w"].reshape(-1).tolist() == list(range(16))


def test_dynamic_non_batch_dim_needs_shape(tmp_path: Path) -> None:
    path = save(one_node("Relu", ("n", 3, "h", "w")), tmp_path)
    with pytest.raises(ShapeError, match="--input-shape"):
        load_onnx(path)
    assert load_onnx(path, [(1, 3, 5, 6)]).nodes[0].output_shapes == [(1, 3, 5, 6)]
    assert load_onnx(path, {"x": (2, 3, 4, 4)}).inputs[0].shape == (2, 3, 4, 4)


def test_wrong_rank_or_conflicting_input_shape(tmp_path: Path) -> None:
    path = save(one_node("Relu", (1, 3, "h", "w")), tmp_path)
    with pytest.raises(ShapeError, match="rank"):
        load_onnx(path, [(1, 3, 5)])
    with pytest.raises(ShapeError, match="fixed to 3"):
        load_onnx(path, [(1, 4, 5, 5)])


def test_nan_weights_named(tmp_path: Path) -> None:
    path = save(one_node("MatMul", (2, 2), [const("bad_w", [[1.0, np.nan], [0, 1]])],
                         extra_inputs=["bad_w"]), tmp_path)
    with pytest.raises(BadWeightsError, match="bad_w"):
        load_onnx(path)


def test_unknown_ops_all_listed(tmp_path: Path) -> None:
    nodes = [helper.make_node("Hardmax", ["x"], ["a"], name="h1"),
             helper.make_node("Hardmax", ["a"], ["b"], name="h2"),
             helper.make_node("FusedGemm", ["b"], ["c"], domain="com.microsoft", name="f"),
             helper.make_node("Det", ["c"], ["y"], name="d")]
    m = model(nodes, {"x": (2, 2)}, ["y"])
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(UnsupportedOpsError) as info:
        load_onnx(save(m, tmp_path))
    assert info.value.unsupported == {"Hardmax": ["h1", "h2"], "com.microsoft.FusedGemm": ["f"],
                                      "Det": ["d"]}


def test_fold_only_op_on_data_path_is_refused(tmp_path: Path) -> None:
    path = save(one_node("Floor", X4, opset=13), tmp_path)
    with pytest.raises(UnsupportedOpsError, match="Floor"):
        load_onnx(path)
