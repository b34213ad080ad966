"""The types every schedule shares: what each rank knows of the data
(``Shape``), what a schedule returns (``TrainResult``), and the minibatch
sizes of an epoch."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Shape:
    """What every rank must know about the data (only rank 0 holds it).
    ``image_shape``: one row's (C, H, W) for images, (D,) for vectors (the
    Dataset's; a row is its values flattened in that order); None where the
    caller does not say (an MLP needs only ``num_features``)."""
    num_train: int
    num_features: int
    num_classes: int
    image_shape: tuple[int, ...] | None = None

    @classmethod
    def of(cls, dataset) -> "Shape":
        """The Shape of a loaded Dataset (datasets/files.py): its training rows, features, classes, image."""
        return cls(dataset.x_train.shape[0], dataset.num_features, dataset.num_classes, tuple(dataset.image_shape))


@dataclass
class TrainResult:
    """Everything rank 0 reports; other ranks get None."""
    timing: np.ndarray          # [ranks, epochs, len(COLUMNS)]
    loss: np.ndarray            # [layers, epochs], mean FF loss per minibatch
    test_accuracy: np.ndarray   # [epochs], NaN where not evaluated
    linears: list               # the trained layers, on the CPU
    dims: list[int]
    blocks: list[range]
    arrays: dict = field(default_factory=dict)  # variant-specific datasets for the results file
    attrs: dict = field(default_factory=dict)   # variant-specific attributes for the results file
    heads: list = field(default_factory=list)   # classifier heads on the CPU (softmax, per-layer), for --model-out
    # the collapse check (schedules/ending.py, check_health) for FF layers; not recorded
    check_health: bool = False
    health_threshold: float | None = None       # the goodness threshold they train to; None: dead units only
    # the test rows as the first layer sees them (x [n, d] -> [n, D], e.g. scff's [x, x]); None: x, label embedded
    health_inputs: Callable | None = None


def batch_rows(num_train: int, batch_size: int) -> list[int]:
    """The rows of each minibatch of an epoch: full ones, then the rest."""
    full, rest = divmod(num_train, batch_size)
    return [batch_size] * full + ([rest] if rest else [])
