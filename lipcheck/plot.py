"""Figures from a JSON report (optional extra: pip install 'lipcheck[plot]').

Per-layer bounds as bars on a log scale with the running AutoLip product as a line;
below it, the histogram of certified radii when the report came from `check --data`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lipcheck.errors import UserError


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError("lipcheck plot needs matplotlib: pip install 'lipcheck[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _radii(data: dict[str, Any]) -> dict[str, Any] | None:
    robustness = (data.get("check") or {}).get("robustness")
    return robustness if robustness and robustness.get("radii") else None


def _finite(values: list[float | None]) -> list[float]:
    return [v if v is not None and math.isfinite(v) else math.nan for v in values]


def _layers_axis(ax, layers: list[dict[str, Any]]) -> None:
    names = [layer["name"] for layer in layers]
    positions = list(range(len(names)))
    bounds = _finite([layer["bound"] for layer in layers])
    colors = ["tab:blue" if layer["certified"] else "tab:orange" for layer in layers]
    ax.bar(positions, [b if b > 0 else math.nan for b in bounds], color=colors,
           label="node bound (orange: estimate)")
    running = _finite([layer.get("running_bound") for layer in layers])  # optional in 1.x
    ax.plot(positions, [r if r > 0 else math.nan for r in running], color="black", marker=".",
            label="running AutoLip product")
    ax.set_yscale("log")
    positive = [v for v in bounds + running if v > 0]
    if positive:
        ax.set_ylim(bottom=min(positive) / 3)
    ax.set_xticks(positions, names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("Lipschitz bound (L2)")
    ax.legend(fontsize=8)


def _radii_axis(ax, robustness: dict[str, Any]) -> None:
    radii = [r for r in robustness["radii"] if r is not None]
    kind = "certified" if robustness["certified"] else "ESTIMATED"
    ax.hist(radii, bins=30, color="tab:green")
    if robustness.get("eps"):
        ax.axvline(robustness["eps"], color="red", linestyle="--",
                   label=f"eps = {robustness['eps']:g}")
        ax.legend(fontsize=8)
    ax.set_xlabel(f"{kind} L2 radius ({robustness['method']} rule; 0 = misclassified)")
    ax.set_ylabel("samples")


def plot_report(data: dict[str, Any], output: Path) -> Path:
    plt = _pyplot()
    robustness = _radii(data)
    rows = 2 if robustness else 1
    fig, axes = plt.subplots(rows, 1, figsize=(max(6.0, 0.35 * len(data["layers"])), 4 * rows),
                             squeeze=False)
    _layers_axis(axes[0][0], data["layers"])
    axes[0][0].set_title(f"lipcheck: {Path(data['model'].get('path') or 'model').name}")
    if robustness:
        _radii_axis(axes[1][0], robustness)
    fig.tight_layout()
    try:
        fig.savefig(output, dpi=120)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot write {output}: {exc}") from None
    finally:
        plt.close(fig)
    return output
