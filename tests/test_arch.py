"""--arch path/to/file.py:factory as well as package.module:factory."""
from __future__ import annotations

import textwrap

import pytest
import torch

from lipcheck.errors import UserError
from lipcheck.loaders.arch import parse_arch
from lipcheck.loaders.dispatch import load_model

NET = """
    from torch import nn
    from helpers import WIDTH   # a neighbour of this file

    def make_net():
        return nn.Sequential(nn.Linear(4, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 2))
"""


@pytest.fixture
def weights(tmp_path, monkeypatch):
    """weights/w.pt with net.py and helpers.py beside it; the working directory elsewhere."""
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "net.py").write_text(textwrap.dedent(NET))
    (folder / "helpers.py").write_text("WIDTH = 5\n")
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    torch.save(model.state_dict(), folder / "w.pt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return folder, model


def _loads_the_weights(graph, model) -> None:
    x = torch.randn(3, 4)
    from lipcheck.interpreter import run_graph
    out = run_graph(graph, {graph.inputs[0].name: x})[graph.outputs[0]]
    assert torch.allclose(out, model(x), atol=1e-6)


@pytest.mark.parametrize("form", ["beside", "absolute", "relative-to-cwd"])
def test_file_factory_loads(weights, form) -> None:
    folder, model = weights
    arch = {"beside": "net.py:make_net", "absolute": f"{folder / 'net.py'}:make_net",
            "relative-to-cwd": "../weights/net.py:make_net"}[form]
    graph = load_model(folder / "w.pt", input_shapes=[(1, 4)], arch=arch)
    _loads_the_weights(graph, model)


def test_missing_file_names_every_place_searched(weights) -> None:
    folder, _ = weights
    with pytest.raises(UserError) as info:
        load_model(folder / "w.pt", input_shapes=[(1, 4)], arch="nets/other.py:make_net")
    message = str(info.value)
    assert "no file nets/other.py" in message
    assert str(folder / "nets" / "other.py") in message and "elsewhere" in message


def test_module_not_found_says_where_it_looked_and_suggests_a_file(weights) -> None:
    folder, _ = weights
    with pytest.raises(UserError, match=r"No module named 'net'.*Python path.*file\.py:make_net"):
        load_model(folder / "w.pt", input_shapes=[(1, 4)], arch="net:make_net")


def test_errors_in_the_file_are_user_errors(weights) -> None:
    folder, _ = weights
    (folder / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(UserError, match="importing .*broken.py raised RuntimeError: boom"):
        load_model(folder / "w.pt", input_shapes=[(1, 4)], arch="broken.py:make_net")
    with pytest.raises(UserError, match="has no attribute 'nope'"):
        load_model(folder / "w.pt", input_shapes=[(1, 4)], arch="net.py:nope")


@pytest.mark.parametrize("text", ["net.py", "net.py:", ":make", "net.py:make-net"])
def test_malformed_values_are_refused_before_anything_runs(text) -> None:
    with pytest.raises(UserError, match="must look like"):
        parse_arch(text)


def test_cli_takes_the_file_form(weights) -> None:
    from typer.testing import CliRunner

    from lipcheck.cli import app
    folder, _ = weights
    result = CliRunner().invoke(app, ["estimate", str(folder / "w.pt"), "--arch",
                                      "net.py:make_net", "--input-shape", "1,4", "--quiet",
                                      "--lower-budget", "0", "--method", "autolip"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["estimate", str(folder / "w.pt"), "--arch",
                                      "nets.py:make_net", "--input-shape", "1,4"])
    assert result.exit_code == 2 and "searched" in result.output
