"""The torch loader holds a model's weights once: shared storage where the graph does not
outlive the call (api.estimate, files), a NaN/Inf check without whole-tensor temporaries,
and a peak that does not grow by copies of the weights (issue 12: VGG-11 took 2.45 GB)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lipcheck.api as api
import lipcheck.finite as finite
import lipcheck.loaders.torch_lowering as lowering
from lipcheck.errors import BadWeightsError
from lipcheck.loaders.torch_loader import load_module, load_pt2
from lipcheck.settings import Settings


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(48, 5))
    net[1].running_mean.normal_()
    net[1].running_var.uniform_(0.5, 2.0)
    return net


def _storages(tensors: list[torch.Tensor]) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors}


def test_shared_constants_are_the_models_tensors() -> None:
    net = _net()
    graph = load_module(net, [(1, 1, 6, 6)], share_weights=True)
    model = _storages([*net.parameters(), *net.buffers()])
    held = [t for t in graph.constants.values() if t.numel() > 1]
    assert held and _storages(held) <= model
    assert not any(t.requires_grad for t in graph.constants.values())


def test_default_load_copies_every_weight() -> None:
    net = _net()
    graph = load_module(net, [(1, 1, 6, 6)])
    assert not _storages(list(graph.constants.values())) & _storages(
        [*net.parameters(), *net.buffers()])


def test_pt2_constants_share_the_programs_weights(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(_net().eval(), (torch.randn(1, 1, 6, 6),)), path)
    seen: list[bool] = []
    real = lowering.lower_program

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(bool(kwargs.get("share_weights", args[5] if len(args) > 5 else False)))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("lipcheck.loaders.torch_loader.lower_program", spy)
    load_pt2(path)
    assert seen == [True]


def test_estimate_shares_weights_and_leaves_them_unchanged(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every phase runs on constants that are the model's own tensors; an in-place write
    anywhere in lipcheck would show up in the model's state_dict."""
    net = _net().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    shared: list[bool] = []
    real = api.load

    def spy(*args: object, **kwargs: object) -> object:
        graph = real(*args, **kwargs)  # type: ignore[arg-type]
        weight = net[4].weight.untyped_storage().data_ptr()
        shared.append(weight in _storages(list(graph.constants.values())))
        return graph

    monkeypatch.setattr(api, "load", spy)
    report = api.estimate(net, [(1, 1, 6, 6)], options=api.EstimateOptions(lower_budget=1.0))
    assert shared == [True]
    assert report.upper_bound is not None and report.lower_bound is not None
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("method", ["all", "auto"])
def test_a_float64_model_is_left_unchanged_by_every_method(method: str) -> None:
    """In float64 no dtype conversion copies a shared weight, so numpy views of the model's
    own tensors reach the estimators: none may write to them."""
    net = _net().double().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    options = api.EstimateOptions(lower_budget=1.0, methods=(method,))
    report = api.estimate(net, [(1, 1, 6, 6)], settings=Settings(time_budget=20.0),
                          options=options)
    assert report.upper_bound is not None
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("where", [0, -1])
def test_nan_found_in_any_block(monkeypatch: pytest.MonkeyPatch, where: int) -> None:
    monkeypatch.setattr(finite, "BLOCK", 7)
    net = nn.Linear(10, 6)
    with torch.no_grad():
        net.weight.view(-1)[where] = float("nan")
        net.weight.view(-1)[30] = float("inf")
    with pytest.raises(BadWeightsError, match="2 NaN/Inf"):
        load_module(net, [(1, 10)], share_weights=True)


def test_inf_buffer_allowed_nan_buffer_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finite, "BLOCK", 3)

    class Masked(nn.Module):
        def __init__(self, fill: float) -> None:
            super().__init__()
            mask = torch.zeros(4, 4)
            mask[3, 0] = fill
            self.register_buffer("mask", mask)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(x + self.mask, -1)

    load_module(Masked(float("-inf")), [(4, 4)])
    with pytest.raises(BadWeightsError, match="mask"):
        load_module(Masked(float("nan")), [(4, 4)])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_onnx_weight_checked_in_every_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           bad: float) -> None:
    """The last block of a MatMul weight holds the one NaN (read) or Inf (after fusion)."""
    from onnx_builders import const, one_node, save

    from lipcheck.loaders.onnx_loader import load_onnx
    monkeypatch.setattr(finite, "BLOCK", 4)
    weight = np.ones((3, 3), dtype=np.float32)
    weight[2, 2] = bad
    path = save(one_node("MatMul", (3, 3), [const("w", weight)], extra_inputs=["w"]), tmp_path)
    with pytest.raises(BadWeightsError, match="'w'"):
        load_onnx(path)
    weight[2, 2] = 1.0
    path = save(one_node("MatMul", (3, 3), [const("w", weight)], extra_inputs=["w"]), tmp_path)
    assert load_onnx(path).constants


def _peak_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise OSError("no VmHWM")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def test_loading_adds_no_copy_of_a_large_weight() -> None:
    """A 256 MB layer: before the fix the lowering cloned it (+0.25 GB) and the NaN check's
    int64 sum of a whole-tensor mask cost +0.5 GB more; now the peak grows far less."""
    try:
        _reset_peak()
        _peak_gb()
    except OSError:
        pytest.skip("peak RSS cannot be reset here (needs Linux /proc/self/clear_refs)")
    load_module(nn.Linear(8, 8), [(1, 8)])  # torch.export's one-time cost (~0.09 GB) first
    net = nn.Linear(8192, 8192, bias=False)
    size = net.weight.numel() * 4 / 2**30
    _reset_peak()
    start = _peak_gb()
    graph = load_module(net, [(1, 8192)], share_weights=True)
    grew = _peak_gb() - start
    assert graph.constants and grew < 0.5 * size, f"peak grew {grew:.3f} GB for {size:.3f} GB"
