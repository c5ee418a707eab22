"""Train the small digits models shipped in models/ and export each to .onnx and .pt2.

Run with `python models/make_models.py` (or `make models`). Deterministic: fixed
seeds, deterministic algorithms, one thread; a few seconds per model on a CPU.
The ONNX files come from torch's TorchScript-based exporter (opset 17) without
constant folding, so each graph has the same layers as the .pt2 (see export_onnx).
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_data import digits_split  # noqa: E402

HERE = Path(__file__).resolve().parent
SEED = 0
OPSET = 17


class Residual(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + x)


def digits_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                         nn.Linear(32, 10))


def digits_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def digits_resnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        Residual(8), nn.MaxPool2d(2), Residual(8),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def digits_spectral() -> nn.Module:
    """An MLP whose linear layers are spectrally normalised while training."""
    layers = [nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)]
    return nn.Sequential(*[spectral_norm(m) if isinstance(m, nn.Linear) else m for m in layers])


@dataclass(frozen=True)
class Spec:
    name: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    architecture: str
    epochs: int
    lr: float
    logit_scale: float = 1.0  # the loss sees scale * logits (lets a 1-Lipschitz net fit)


SPECS = [
    Spec("digits_mlp", digits_mlp, (1, 64), "MLP 64-64-32-10, ReLU", 30, 3e-3),
    Spec("digits_cnn", digits_cnn, (1, 1, 8, 8),
         "conv3x3(8)-BN-ReLU-maxpool2-conv3x3(16)-BN-ReLU-global avg pool-flatten-linear(10)",
         30, 1e-2),
    Spec("digits_resnet", digits_resnet, (1, 1, 8, 8),
         "conv3x3(8)-BN-ReLU, residual block, maxpool2, residual block, global avg pool, "
         "linear(10); each residual block is conv-BN-ReLU-conv-BN + identity, ReLU", 30, 1e-2),
    Spec("digits_spectral", digits_spectral, (1, 64),
         "MLP 64-64-32-10, ReLU, trained with spectral_norm on every linear layer "
         "(parametrisation removed before export)", 60, 1e-2, logit_scale=10.0),
]


def setup() -> None:
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def to_tensors(spec: Spec) -> tuple[torch.Tensor, ...]:
    x_train, y_train, x_test, y_test = digits_split()
    shape = (-1,) + spec.input_shape[1:]
    return (torch.from_numpy(x_train).reshape(shape), torch.from_numpy(y_train).long(),
            torch.from_numpy(x_test).reshape(shape), torch.from_numpy(y_test).long())


def train(spec: Spec) -> tuple[nn.Module, float]:
    """Adam on mini-batches of 64 with a fixed shuffle; returns the model and test accuracy."""
    setup()
    model = spec.factory()
    x, y, x_test, y_test = to_tensors(spec)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(spec.epochs):
        for batch in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            logits = spec.logit_scale * model(x[batch])
            nn.functional.cross_entropy(logits, y[batch]).backward()
            opt.step()
    model.eval()
    strip_parametrizations(model)
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    return model, accuracy


def strip_parametrizations(model: nn.Module, power_steps: int = 500) -> None:
    """Bake spectral_norm's W / sigma into a plain weight. spectral_norm's sigma comes
    from one power-iteration step per training forward, so it is first converged (each
    access to the weight in training mode runs one more step)."""
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        module.train()
        with torch.no_grad():
            for _ in range(power_steps):
                getattr(module, "weight")
        module.eval()
        for name in list(module.parametrizations):
            parametrize.remove_parametrizations(module, name, leave_parametrized=True)


def export(model: nn.Module, spec: Spec) -> None:
    example = torch.zeros(spec.input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(model, (example,)), str(HERE / f"{spec.name}.pt2"))
        export_onnx(model, example, HERE / f"{spec.name}.onnx")


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """The TorchScript-based exporter without constant folding: BatchNormalization stays
    its own node and adaptive pooling to 1x1 becomes GlobalAveragePool, as in the .pt2.
    (The torch.export-based exporter either folds BN into the conv (optimize=True) or,
    unoptimised, emits Shape/Expand/CastLike scaffolding around bias-free convs.)"""
    torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=OPSET,
                      do_constant_folding=False, input_names=["input"],
                      output_names=["logits"])


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    rows = []
    for spec in SPECS:
        model, accuracy = train(spec)
        export(model, spec)
        rows.append((spec, parameter_count(model), accuracy))
        print(f"{spec.name}: {parameter_count(model)} parameters, test accuracy {accuracy:.4f}")
    np.set_printoptions(precision=4)
    print("\n| name | input shape | parameters | test accuracy |")
    for spec, params, accuracy in rows:
        print(f"| {spec.name} | {'x'.join(map(str, spec.input_shape))} | {params} | "
              f"{accuracy:.4f} |")


if __name__ == "__main__":
    main()
