"""A pipeline rank's pieces: its stage (a block of FF layers and the step
through them) and, on rank 0, the source of minibatches."""
from __future__ import annotations

import torch

from ... import ff
from ...core.config import Config
from ...core.partition import balanced_partition, layer_costs
from ...core.types import Shape
from ...core.world import World
from ...ff.negatives import random_wrong_labels


class Stage:
    """This rank's block of layers (a compute-balanced contiguous block,
    core/partition.py), each an FFLayer with its own Adam, on its device."""

    def __init__(self, config: Config, world: World, shape: Shape):
        self.world, self.shape, self.rank = world, shape, world.rank
        self.device = world.device(config.device)
        self.dims = [shape.num_features, *config.layers]
        self.blocks = balanced_partition(layer_costs(self.dims), world.size)
        self.block = self.blocks[world.rank]
        scales = [ff.input_scale(config.norm, d) for d in self.dims[:-1]]
        self.layers = {i: ff.FFLayer(ff.make_linear(self.dims[i], self.dims[i + 1], config.seed, i, scales[i])
                                     .to(self.device), config.lr, config.threshold, config.sharpness, scales[i])
                       for i in self.block}
        self.owner_of = [r for r, b in enumerate(self.blocks) for _ in b]
        self.score_layers = config.score_layers or ff.default_score_layers(len(config.layers))
        self.gathered = None  # every layer, on rank 0, as of the last evaluation

    def linears(self) -> dict[int, torch.nn.Linear]:
        return {i: self.layers[i].linear for i in self.block}

    def linear_list(self) -> list[torch.nn.Linear]:
        """The block's layers, first owned first (what --inject-nan poisons)."""
        return [self.layers[i].linear for i in self.block]

    def zero_losses(self) -> dict[int, torch.Tensor]:
        return {i: torch.zeros((), device=self.device) for i in self.block}

    def to_device(self, x: torch.Tensor, norms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A received message on this rank's device (a GPU's staging copy)."""
        if self.device.type != "cpu":
            return x.to(self.device, non_blocking=True), norms.to(self.device, non_blocking=True)
        return x, norms

    def empty_output(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the block's output of a minibatch of ``n`` pairs goes when not straight into a message."""
        width = self.dims[self.block.stop]
        return torch.empty((2 * n, width), device=self.device), torch.empty((2 * n, 1), device=self.device)

    def step(self, x, norms, n: int, lr: float, out, norms_out, losses: dict) -> None:
        """One FF step of every layer of the block on a minibatch of ``n``
        pairs: ``x`` the block's input (rank 0: a PairBatch; else the previous
        block's output, divided here by its row ``norms``); the last layer's
        output goes to ``out`` and ``norms_out`` unnormalized (None on the
        last rank).  Adds each layer's loss to ``losses``."""
        if norms is not None:
            x = x.div_(norms)
        for i in self.block:
            self.layers[i].set_lr(lr)
            to = {} if i < self.block[-1] else {"out": out, "normalize": False, "norm_out": norms_out}
            x, step_loss = self.layers[i].train_step_pairs(x, **to) if i == 0 else self.layers[i].train_step(x, n, **to)
            losses[i] += step_loss


class BatchSource:
    """Rank 0's minibatches: a fresh permutation per epoch and a random wrong
    label per example, drawn at the epoch's start from one seeded generator
    (so a checkpoint at an epoch boundary holds the whole random state)."""

    def __init__(self, dataset, config: Config, device: torch.device, sizes: list[int]):
        self.inputs = ff.FirstLayerInputs(dataset.x_train.to(device), dataset.num_classes)
        self.y = dataset.y_train.to(device)
        self.num_classes = dataset.num_classes
        self.sizes = sizes
        self.generator = torch.Generator().manual_seed(config.seed)
        self.epoch = None

    def start_epoch(self) -> None:
        order = torch.randperm(self.y.shape[0], generator=self.generator).to(self.y.device)
        labels = self.y[order]
        wrong = random_wrong_labels(labels, self.num_classes, self.generator)
        self.epoch = self.inputs.epoch(order, labels, wrong, self.sizes)

    def batch(self, index: int) -> ff.PairBatch:
        return self.epoch.batch(index)
