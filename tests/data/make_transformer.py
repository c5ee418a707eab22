"""Writes transformer_encoder.onnx and .pt2 beside this file: one nn.TransformerEncoderLayer
(d_model 32, 2 heads, feed-forward 64, post-LayerNorm, ReLU, no dropout) on a sequence of 8,
random weights from seed 0, input shape (1, 8, 32).

The ONNX file needs torch's dynamo exporter (pip install onnxscript; the TorchScript
exporter cannot trace this layer in torch 2.13): python tests/data/make_transformer.py
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
SHAPE = (1, 8, 32)


def encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.TransformerEncoderLayer(32, 2, dim_feedforward=64, dropout=0.0,
                                      batch_first=True).eval()


def main() -> None:
    torch.set_num_threads(1)
    model, example = encoder(), torch.zeros(SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(model, (example,)),
                          str(HERE / "transformer_encoder.pt2"))
        torch.onnx.export(model, (example,), str(HERE / "transformer_encoder.onnx"), dynamo=True,
                          opset_version=18, external_data=False)


if __name__ == "__main__":
    main()
