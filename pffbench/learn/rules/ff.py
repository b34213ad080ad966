"""The ff rule: Hinton's Forward-Forward as pffbench trains it (ff/layer.py).

- step: ``FFLayer.train_step`` (hand-written gradient of the goodness loss,
  tested against autograd in tests/unit/test_ff.py), on (positive; negative)
  rows: the example under its label and under a random wrong label;
- what travels: the normalized activity of both, [2n, width];
- classifier: the label whose summed goodness is highest (ff.accuracy);
- negatives: yes (the caller's wrong labels, ff/negatives.py).

The pipeline (schedules/pipeline/stage.py) and the PFF kinds
(schedules/pff/kinds.py: FFKind) run it through their own tuned paths: the
first layer's PairBatch, outputs straight into the outgoing message.
"""
from __future__ import annotations

import torch

from ... import ff

NEEDS_NEGATIVES = True


def input_width(num_features: int) -> int:
    return num_features


def message_rows(n: int) -> int:
    return 2 * n


def make_layer(index: int, dims: list[int], num_classes: int, config, device) -> ff.FFLayer:
    scale = ff.input_scale(config.norm, dims[index])  # --norm length: the paper's unit-length inputs
    return ff.FFLayer(ff.make_linear(dims[index], dims[index + 1], config.seed, index, scale).to(device),
                      config.lr, config.threshold, config.sharpness, scale)


def step(layer: ff.FFLayer, x: torch.Tensor, side, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [2n, width] (positive; negative) normalized rows."""
    return layer.train_step(x, n)


def health(config) -> tuple[float, None]:
    """The collapse check: goodness against --threshold, on rows with their label embedded."""
    return config.threshold, None


def accuracy(linears, heads, dataset, config, device) -> float:
    score_layers = config.score_layers or ff.default_score_layers(len(linears))
    return ff.accuracy([l.to(device) for l in linears], dataset.x_test.to(device), dataset.y_test.to(device),
                       dataset.num_classes, score_layers)
