"""tools/pff_checkpoint_scores.py: an All-Layers checkpoint's carry rebuilt into the layers that trained, scored as
the run scores them (the diagnosis of docs/paper.md's Goodness/Random row)."""
import importlib.util
from pathlib import Path

import pytest
import torch

from pffbench import ff

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("pff_checkpoint_scores", ROOT / "tools" / "pff_checkpoint_scores.py")
scores = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scores)


def test_the_carry_gives_back_the_layers_and_their_goodness_scores():
    torch.manual_seed(0)
    trained = [torch.nn.Linear(12, 8), torch.nn.Linear(8, 6)]
    carry = {i: torch.cat([lin.weight.detach().flatten(), lin.bias.detach()]) for i, lin in enumerate(trained)}
    rebuilt = scores.linears_of({"carry": carry}, input_width=12)
    assert [(lin.in_features, lin.out_features) for lin in rebuilt] == [(12, 8), (8, 6)]
    x = torch.rand(5, 12)
    assert torch.equal(ff.label_goodness(rebuilt, x, 10, (0, 1)), ff.label_goodness(trained, x, 10, (0, 1)))


def test_a_carry_of_another_net_is_refused_with_its_layer():
    with pytest.raises(ValueError, match="layer 0: 10 values are not a 12-input layer"):
        scores.linears_of({"carry": {0: torch.zeros(10)}}, input_width=12)


def test_a_missing_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    assert scores.main([str(tmp_path / "rank-0000.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pff_checkpoint_scores: error: ")
