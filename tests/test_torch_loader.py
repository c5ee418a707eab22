"""The PyTorch front end: every converter reproduces torch's output; file formats;
refusals (pickles, NaN weights, unsupported ops, bad shapes)."""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
import torch_archs
from torch import nn

from lipcheck.errors import (
    BadWeightsError,
    ModelLoadError,
    ShapeError,
    UnsafeFileError,
    UnsupportedOpsError,
    UserError,
)
from lipcheck.graph import Graph, OpKind
from lipcheck.interpreter import run_graph
from lipcheck.loaders.dispatch import load_model
from lipcheck.loaders.torch_loader import load_module, load_pt2


class Fn(nn.Module):
    """A module around a function of (self, x); buffers passed as keyword tensors."""

    def __init__(self, fn: Callable, **buffers: torch.Tensor) -> None:
        super().__init__()
        self.fn = fn
        for name, value in buffers.items():
            self.register_buffer(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self, x)


def _bn(channels: int, dims: int = 2, affine: bool = True) -> nn.Module:
    bn = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(channels, affine=affine)
    gen = torch.Generator().manual_seed(1)
    bn.running_mean.copy_(torch.randn(channels, generator=gen))
    bn.running_var.copy_(torch.rand(channels, generator=gen) + 0.5)
    if affine:
        bn.weight.data.copy_(torch.randn(channels, generator=gen))
        bn.bias.data.copy_(torch.randn(channels, generator=gen))
    return bn


IMG = (2, 3, 6, 6)
VEC = (3, 8)
CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], set[OpKind]]] = {
    "linear2d": (lambda: nn.Linear(8, 5), VEC, {OpKind.GEMM}),
    "linear3d": (lambda: nn.Linear(6, 5), (2, 4, 6), {OpKind.MATMUL, OpKind.ADD}),
    "linear_nobias": (lambda: nn.Linear(8, 5, bias=False), VEC, {OpKind.GEMM}),
    "mm": (lambda: Fn(lambda s, x: x @ s.w, w=torch.randn(8, 4)), VEC, {OpKind.MATMUL}),
    "conv_stride_groups": (lambda: nn.Conv2d(3, 6, 3, stride=2, padding=1, groups=3), IMG,
                           {OpKind.CONV}),
    "conv_same_even": (lambda: nn.Conv2d(3, 4, 4, padding="same", dilation=1), IMG,
                       {OpKind.CONV}),
    "conv_valid_dilated": (lambda: nn.Conv2d(3, 2, 3, padding="valid", dilation=2), IMG,
                           {OpKind.CONV}),
    "conv1d": (lambda: nn.Conv1d(3, 4, 3, padding=2, bias=False), (2, 3, 7), {OpKind.CONV}),
    "conv3d": (lambda: nn.Conv3d(2, 2, 2, stride=(1, 2, 1)), (1, 2, 3, 4, 4), {OpKind.CONV}),
    "conv_transpose": (lambda: nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1,
                                                  output_padding=1), IMG,
                       {OpKind.CONV_TRANSPOSE}),
    "batchnorm2d": (lambda: _bn(3), IMG, {OpKind.BATCH_NORM}),
    "batchnorm1d_noaffine": (lambda: _bn(8, 1, affine=False), VEC, {OpKind.BATCH_NORM}),
    "layer_norm": (lambda: nn.LayerNorm(8), VEC, {OpKind.LAYER_NORM}),
    "leaky_relu": (lambda: nn.LeakyReLU(0.2), VEC, {OpKind.LEAKY_RELU}),
    "gelu": (lambda: nn.GELU(), VEC, {OpKind.GELU}),
    "gelu_tanh": (lambda: nn.GELU("tanh"), VEC, {OpKind.GELU}),
    "silu": (lambda: nn.SiLU(), VEC, {OpKind.SILU}),
    "sigmoid_tanh": (lambda: nn.Sequential(nn.Sigmoid(), nn.Tanh()), VEC,
                     {OpKind.SIGMOID, OpKind.TANH}),
    "elu": (lambda: nn.ELU(0.5), VEC, {OpKind.ELU}),
    "selu": (lambda: nn.SELU(), VEC, {OpKind.SELU}),
    "celu": (lambda: nn.CELU(0.7), VEC, {OpKind.CELU}),
    "hardtanh_relu6": (lambda: nn.Sequential(nn.Hardtanh(-0.5, 2.0), nn.ReLU6()), VEC,
                       {OpKind.CLIP}),
    "clamp": (lambda: Fn(lambda s, x: x.clamp(min=-0.3) + x.clamp(-1.0, 0.5)), VEC,
              {OpKind.CLIP, OpKind.ADD}),
    "hardswish_hardsigmoid": (lambda: nn.Sequential(nn.Hardswish(), nn.Hardsigmoid()), VEC,
                              {OpKind.HARD_SWISH, OpKind.HARD_SIGMOID}),
    "softplus": (lambda: nn.Softplus(beta=2.0, threshold=1.0), VEC, {OpKind.SOFTPLUS}),
    "mish_abs_neg": (lambda: Fn(lambda s, x: -F.mish(x).abs()), VEC,
                     {OpKind.MISH, OpKind.ABS, OpKind.NEG}),
    "prelu": (lambda: nn.PReLU(3, init=0.1), IMG, {OpKind.PRELU}),
    "maxpool": (lambda: nn.MaxPool2d(3, stride=2, padding=1), IMG, {OpKind.MAX_POOL}),
    "maxpool_ceil": (lambda: nn.MaxPool2d(2, stride=2, ceil_mode=True), (1, 2, 5, 5),
                     {OpKind.MAX_POOL}),
    "avgpool_exclude_pad": (lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False), IMG,
                            {OpKind.AVERAGE_POOL}),
    "avgpool_include_pad": (lambda: nn.AvgPool2d(2, 1, 1), IMG, {OpKind.AVERAGE_POOL}),
    "adaptive_avg_1": (lambda: nn.AdaptiveAvgPool2d(1), IMG, {OpKind.GLOBAL_AVERAGE_POOL}),
    "adaptive_avg_3": (lambda: nn.AdaptiveAvgPool2d(3), IMG, {OpKind.AVERAGE_POOL}),
    "adaptive_max_1": (lambda: nn.AdaptiveMaxPool2d(1), IMG, {OpKind.GLOBAL_MAX_POOL}),
    "reductions": (lambda: Fn(lambda s, x: x.mean((2, 3)) + x.sum(-1).amax(-1)
                              + x.max(dim=3).values.mean(-1)), IMG,
                   {OpKind.REDUCE_MEAN, OpKind.REDUCE_SUM, OpKind.REDUCE_MAX}),
    "reshapes": (lambda: Fn(lambda s, x: x.flatten(1).reshape(2, 6, 18).view(2, -1)
                            .unsqueeze(1).squeeze(1)), IMG,
                 {OpKind.RESHAPE, OpKind.UNSQUEEZE, OpKind.SQUEEZE}),
    "transposes": (lambda: Fn(lambda s, x: x.permute(0, 2, 3, 1).transpose(1, 2)
                              .contiguous()), IMG, {OpKind.TRANSPOSE}),
    "cat_split": (lambda: Fn(lambda s, x: torch.cat([*x.split([1, 2], dim=1), x], 1)
                             + torch.cat(x.chunk(3, dim=1)[::-1], 1).repeat(1, 2, 1, 1)), IMG,
                  {OpKind.CONCAT, OpKind.SPLIT, OpKind.TILE}),
    "slice_select_gather": (lambda: Fn(lambda s, x: x[:, -9:, ::2, -3:-1].sum(1)
                                       + x[:, 0, 1:6:2, 2:4]
                                       + x.index_select(2, s.idx)[:, 2, :, :2],
                                       idx=torch.tensor([5, 0, 3])), IMG,
                            {OpKind.SLICE, OpKind.GATHER}),
    "expand_unbind": (lambda: Fn(lambda s, x: x[:, :1].expand(2, 3, 6, 6)
                                 + torch.stack(x.unbind(1), 1)), IMG,
                      {OpKind.EXPAND, OpKind.CONCAT}),
    "pads": (lambda: Fn(lambda s, x: F.pad(x, (1, 2, 0, 1), value=0.5)[:, :, :6, :6]
                        + F.pad(x, (1, 1, 2, 0), mode="reflect")[:, :, :6, :6]
                        + F.pad(x, (0, 1, 1, 1), mode="replicate")[:, :, :6, :6]), IMG,
             {OpKind.PAD}),
    "upsample": (lambda: Fn(lambda s, x: F.interpolate(x, scale_factor=2, mode="nearest")
                            + F.interpolate(x, size=(12, 12), mode="bilinear")), IMG,
                 {OpKind.RESIZE}),
    "pixel_shuffle": (lambda: nn.PixelShuffle(2), (1, 8, 3, 3), {OpKind.DEPTH_TO_SPACE}),
    "arithmetic": (lambda: Fn(lambda s, x: (torch.add(x, x * s.w, alpha=2) - 3 * x) / 4
                              + (1.5 - x) - torch.sub(x, s.w, alpha=0.5),
                              w=torch.randn(8)), VEC,
                   {OpKind.ADD, OpKind.SUB, OpKind.MUL, OpKind.DIV}),
    "max_min": (lambda: Fn(lambda s, x: torch.maximum(x, s.w) + torch.minimum(x, -x),
                           w=torch.randn(8)), VEC, {OpKind.MAX, OpKind.MIN}),
    "softmax": (lambda: Fn(lambda s, x: x.softmax(-1) + x.log_softmax(1)), VEC,
                {OpKind.SOFTMAX, OpKind.LOG_SOFTMAX}),
    "unbounded_ops": (lambda: Fn(lambda s, x: x.exp() + x.abs().add(1).log() + x.pow(2)
                                 + x.abs().add(1).sqrt() + x.abs().add(1).rsqrt()), VEC,
                      {OpKind.EXP, OpKind.LOG, OpKind.POW, OpKind.SQRT, OpKind.RECIPROCAL}),
    "dropout_identity": (lambda: nn.Sequential(nn.Dropout(0.5), nn.Linear(8, 2)), VEC,
                         {OpKind.IDENTITY, OpKind.GEMM}),
    "einsum_decomposed": (lambda: Fn(lambda s, x: torch.einsum("bi,ji->bj", x, s.w),
                                     w=torch.randn(5, 8)), VEC, {OpKind.MATMUL}),
}


def _compare(graph: Graph, model: nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = model.eval()(x)
    got = run_graph(graph, {graph.inputs[0].name: x})[graph.outputs[0]]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_converter_reproduces_torch(case: str) -> None:
    factory, shape, ops = CASES[case]
    torch.manual_seed(0)
    model = factory()
    graph = load_module(model, [shape])
    assert ops <= {n.op for n in graph.nodes}, {n.op for n in graph.nodes}
    _compare(graph, model, shape)


def test_resnet_block_names_and_shapes() -> None:
    block = torch_archs.small_cnn()
    graph = load_module(block, [(1, 1, 8, 8)])
    names = [n.name for n in graph.nodes]
    assert names[:4] == ["conv", "bn", "relu", "pool"]
    assert len(set(names)) == len(names)
    assert graph.nodes[0].attrs["pads"] == [1, 1, 1, 1]
    assert graph.nodes[-1].output_shapes == [(1, 3)]
    assert graph.metadata["format"] == "module" and graph.metadata["input_shape"] == [[1, 1, 8, 8]]
    assert set(graph.constants) >= {"conv.weight", "bn.running_var", "fc.bias"}
    assert graph.parameter_count() == sum(p.numel() for p in block.parameters()) + 8


class TwoInTwoOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.a(x) + self.b(z)
        return torch.relu(h), h.sum(1)


def test_several_inputs_and_outputs() -> None:
    model = TwoInTwoOut()
    graph = load_module(model, [(2, 4), (2, 2)])
    assert [v.shape for v in graph.inputs] == [(2, 4), (2, 2)] and len(graph.outputs) == 2
    x, z = torch.randn(2, 4), torch.randn(2, 2)
    got = run_graph(graph, {graph.inputs[0].name: x, graph.inputs[1].name: z})
    for name, want in zip(graph.outputs, model(x, z), strict=True):
        torch.testing.assert_close(got[name], want.detach(), rtol=1e-5, atol=1e-5)


def test_user_model_untouched() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.3), nn.BatchNorm1d(4)).train()
    model[2].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attrs = set(vars(model))
    load_module(model, [(2, 4)])
    assert [m.training for m in model.modules()] == [True, True, True, False]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(vars(model)) == attrs


def test_constants_are_detached_clones() -> None:
    model = nn.Linear(3, 2)
    graph = load_module(model, [(1, 3)])
    with torch.no_grad():
        model.weight.fill_(5.0)
    assert not torch.equal(graph.constants["weight"], model.weight)
    assert not graph.constants["weight"].requires_grad


def test_unsupported_ops_are_all_reported() -> None:
    model = Fn(lambda s, x: torch.flip(x.cumsum(1), [1]) + x.sort(1).values)
    with pytest.raises(UnsupportedOpsError) as info:
        load_module(model, [(2, 4)])
    assert set(info.value.unsupported) == {"aten.cumsum.default", "aten.flip.default",
                                          "aten.sort.default"}


def test_uneven_adaptive_pool_unsupported() -> None:
    with pytest.raises(UnsupportedOpsError, match="uneven"):
        load_module(nn.AdaptiveAvgPool2d(4), [(1, 1, 6, 6)])


def test_wrong_converter_is_caught(monkeypatch) -> None:
    """The loader checks the lowered graph against torch: a bad converter cannot pass."""
    from lipcheck.errors import GraphError
    from lipcheck.loaders.aten_table import TABLE

    def relu_as_tanh(low, node):
        return low.emit(OpKind.TANH, [low.value(node.args[0])])

    monkeypatch.setitem(TABLE, "aten.relu.default", relu_as_tanh)
    with pytest.raises(GraphError, match="does not reproduce"):
        load_module(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), [(2, 3)])


def test_nan_weights_refused() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        model[2].weight[0, 1] = math.nan
    with pytest.raises(BadWeightsError, match="2.weight"):
        load_module(model, [(1, 3)])


def test_bad_shapes() -> None:
    with pytest.raises(ShapeError):
        load_module(nn.Linear(3, 2), [])
    with pytest.raises(ShapeError):
        load_module(nn.Linear(3, 2), [(1, 0)])
    with pytest.raises(ModelLoadError, match="torch.export"):
        load_module(nn.Linear(3, 2), [(1, 4)])


# ----- files ---------------------------------------------------------------------------
def _save_pt2(model: nn.Module, shape: tuple[int, ...], path, dynamic: bool = False) -> None:
    x = torch.randn(shape)
    dims = ({"x": {0: torch.export.Dim("batch", min=1, max=64)}} if dynamic else None)
    wrapper = Fn(lambda s, x: s.inner(x))
    wrapper.inner = model.eval()
    ep = torch.export.export(wrapper, (x,), dynamic_shapes=dims)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(ep, str(path))


def test_pt2_round_trip(tmp_path) -> None:
    model = torch_archs.small_cnn()
    _save_pt2(model, (1, 1, 8, 8), tmp_path / "m.pt2")
    graph = load_model(tmp_path / "m.pt2")
    assert graph.metadata["format"] == "pt2" and len(graph.metadata["sha256"]) == 64
    assert graph.inputs[0].shape == (1, 1, 8, 8)
    _compare(graph, model, (1, 1, 8, 8))
    with pytest.raises(ShapeError, match="exported for"):
        load_pt2(tmp_path / "m.pt2", [(2, 1, 8, 8)])


def test_pt2_dynamic_batch_needs_shapes(tmp_path) -> None:
    model = torch_archs.tiny_mlp()
    _save_pt2(model, (4, 4), tmp_path / "d.pt2", dynamic=True)
    with pytest.raises(ShapeError, match="dynamic"):
        load_model(tmp_path / "d.pt2")
    graph = load_model(tmp_path / "d.pt2", input_shapes=[(3, 4)])
    assert graph.inputs[0].shape == (3, 4)
    _compare(graph, model, (3, 4))


@pytest.mark.parametrize("how", ["trace", "script"])
def test_torchscript(tmp_path, how: str) -> None:
    model = torch_archs.small_cnn().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        script = (torch.jit.trace(model, torch.randn(1, 1, 8, 8)) if how == "trace"
                  else torch.jit.script(model))
    script.save(str(tmp_path / "ts.pt"))
    with pytest.raises(UnsafeFileError, match="rename it to ts.torchscript"):
        load_model(tmp_path / "ts.pt", input_shapes=[(1, 1, 8, 8)])
    (tmp_path / "ts.pt").rename(tmp_path / "ts.torchscript")
    with pytest.raises(ShapeError):
        load_model(tmp_path / "ts.torchscript")
    graph = load_model(tmp_path / "ts.torchscript", input_shapes=[(1, 1, 8, 8)])
    assert graph.metadata["format"] == "torchscript"
    assert {n.op for n in graph.nodes} >= {OpKind.CONV, OpKind.BATCH_NORM, OpKind.GEMM}
    assert {"conv.weight", "bn.running_var", "fc.bias"} <= set(graph.constants)
    _compare(graph, model, (1, 1, 8, 8))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
def test_state_dict_with_arch(tmp_path, suffix: str) -> None:
    model = torch_archs.small_cnn()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    with pytest.raises(UserError, match="--arch"):
        load_model(path, input_shapes=[(1, 1, 8, 8)])
    with pytest.raises(ShapeError):
        load_model(path, arch="torch_archs:small_cnn")
    graph = load_model(path, input_shapes=[(1, 1, 8, 8)], arch="torch_archs:small_cnn")
    assert graph.metadata["format"] == "state_dict"
    _compare(graph, model, (1, 1, 8, 8))


def test_bad_arch(tmp_path) -> None:
    path = tmp_path / "w.pt"
    torch.save(torch_archs.small_cnn().state_dict(), path)
    with pytest.raises(ModelLoadError, match="does not fit"):
        load_model(path, input_shapes=[(1, 4)], arch="torch_archs:tiny_mlp")
    for arch in ("torch_archs", "no_such_module:f", "torch_archs:missing",
                 "torch_archs:not_a_module"):
        with pytest.raises(UserError):
            load_model(path, input_shapes=[(1, 4)], arch=arch)


def test_pickled_module_needs_opt_in(tmp_path) -> None:
    model = torch_archs.small_cnn()
    path = tmp_path / "full.pt"
    torch.save(model, path)
    with pytest.raises(UnsafeFileError, match="--unsafe-pickle"):
        load_model(path, input_shapes=[(1, 1, 8, 8)])
    with pytest.warns(UserWarning, match="unsafe-pickle"):
        graph = load_model(path, input_shapes=[(1, 1, 8, 8)], unsafe_pickle=True)
    assert [c for c, _ in graph.metadata["warnings"]] == ["unsafe_pickle"]
    _compare(graph, model, (1, 1, 8, 8))


def test_dispatch_errors(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(tmp_path / "absent.onnx")
    with pytest.raises(ModelLoadError, match="directory"):
        load_model(tmp_path)
    (tmp_path / "m.h5").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=".onnx"):
        load_model(tmp_path / "m.h5")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError):
        load_model(tmp_path / "junk.pt", input_shapes=[(1, 2)], arch="torch_archs:tiny_mlp")


def test_pt2_archive_under_a_weights_name_is_refused(tmp_path) -> None:
    """Code-carrying formats load only when their own extension names them."""
    model = torch_archs.small_cnn().eval()
    program = torch.export.export(model, (torch.randn(1, 1, 8, 8),))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    (tmp_path / "m.pt2").rename(tmp_path / "m.pt")
    with pytest.raises(UnsafeFileError, match="rename it to m.pt2"):
        load_model(tmp_path / "m.pt", input_shapes=[(1, 1, 8, 8)])
