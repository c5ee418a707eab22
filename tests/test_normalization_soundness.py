"""Every certified upper bound lipcheck reports on small nets with normalisation layers is
>= every Jacobian norm found on them (the maximisers of the normalisations' slopes are
constant inputs, so the search starts near constant inputs as well as at random ones)."""
from __future__ import annotations

import math

import pytest
import torch
from graphs import function_of
from torch import nn

from lipcheck import api
from lipcheck.settings import Settings


def _search(graph, points: int = 30) -> float:
    f = function_of(graph)
    shape = graph.inputs[0].shape
    n = math.prod(shape)
    gen = torch.Generator().manual_seed(0)
    best = 0.0
    for k in range(points):
        noise = torch.randn(n, generator=gen, dtype=torch.float64) * 10.0 ** (k % 6 - 4)
        x = noise + (torch.randn((), generator=gen, dtype=torch.float64) if k % 2 else 0.0)
        jac = torch.autograd.functional.jacobian(f, x)
        best = max(best, float(torch.linalg.matrix_norm(jac, ord=2)))
    return best


class _RMS(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm, self.fc = nn.RMSNorm(6, eps=1e-2), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.norm(x)))


class _LRN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.local_response_norm(x, 3, alpha=1.0, beta=0.75, k=1.0)
        return self.conv(torch.tanh(y)).flatten(1)


NETS = {
    "layer_norm_mlp": (lambda: nn.Sequential(nn.LayerNorm(6, eps=1e-2), nn.Linear(6, 5),
                                             nn.ReLU(), nn.Linear(5, 3)), (1, 6)),
    "group_norm_cnn": (lambda: nn.Sequential(nn.GroupNorm(2, 4, eps=1e-2), nn.ReLU(),
                                             nn.Conv2d(4, 2, 3), nn.Flatten()), (1, 4, 3, 3)),
    "instance_norm_cnn": (lambda: nn.Sequential(nn.InstanceNorm2d(2, eps=1e-2, affine=True),
                                                nn.Conv2d(2, 2, 2), nn.Flatten()), (1, 2, 3, 3)),
    "rms_norm_mlp": (_RMS, (2, 6)),
    "lrn_cnn": (_LRN, (1, 4, 2, 2)),
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_certified_upper_bounds_dominate_the_jacobians_found(name: str) -> None:
    torch.manual_seed(0)
    build, shape = NETS[name]
    module = build().eval()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    graph = api.load(module, [shape])
    report = api.estimate(graph, settings=Settings(time_budget=5.0),
                          options=api.EstimateOptions(methods=("all",), lower_budget=0.0))
    found = _search(graph)
    uppers = [b for b in report.to_dict()["bounds"] if b["kind"] == "upper" and b["certified"]]
    assert uppers and all(b["value"] is not None for b in uppers), uppers
    print(name, f"found {found:.4f}", {b["method"]: round(b["value"], 4) for b in uppers})
    for b in uppers:
        assert b["value"] >= found * (1 - 1e-9), (b["method"], b["value"], found)
