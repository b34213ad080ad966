"""A pipeline rank's pieces: its stage (a block of layers of the run's
learning rule, pffbench/learn/rules, and the step through them) and, on
rank 0, the source of minibatches."""
from __future__ import annotations

import torch

from ... import ff
from ...core.config import Config
from ...core.partition import balanced_partition, layer_costs
from ...core.types import Shape
from ...core.world import World
from ...ff.negatives import random_wrong_labels
from ...learn import rules
from ...learn.nets.conv import ConvNet


class Stage:
    """This rank's block of layers (a compute-balanced contiguous block,
    core/partition.py), each with its own Adam, on its device.

    The ff rule runs its tuned path (the first layer's PairBatch, outputs
    computed straight into the outgoing message, normalized by the next
    rank); every other rule (``generic``) its module's ``step``, which
    hands the next layer normalized activity, and what travels beside it
    (``side`` [rows, 1], e.g. local-softmax's labels) in the message's
    column the ff rule fills with row norms.

    Layers are split by --layer-costs where given (measured:
    probes/layer_costs.py), else modelled: an MLP's by weight counts, a conv
    net's (--conv; ``net``, learn/nets/conv.py) by its layers' FLOPs with
    their rule's loss (the rule's ``conv_costs``: local-softmax's auxiliary
    heads, cwcomp's goodness), which misjudge a full-resolution block's
    elementwise work (probes/layer_costs.py).  A conv net's ``dims`` are its
    layers' outputs flattened (C*H*W values a row), which size the messages
    and rings: a block's output [n, C, H, W] travels as its contiguous rows
    and the next block views them as images again."""

    def __init__(self, config: Config, world: World, shape: Shape):
        self.world, self.shape, self.rank = world, shape, world.rank
        self.device = world.device(config.device)
        self.objective = rules.objective_of(config)
        self.rule = rules.module(self.objective)
        self.generic = self.objective != "ff"
        self.net = ConvNet.of(config, shape) if config.conv else None
        if self.net:
            self.dims = self.net.dims[:-1]  # the input, then every hidden layer's output; no softmax head
            costs = self.rule.conv_costs(self.net)
        else:
            self.dims = [self.rule.input_width(shape.num_features), *config.layers]
            costs = layer_costs(self.dims)
        self.blocks = balanced_partition(config.layer_costs or costs, world.size)  # measured costs where given
        self.block = self.blocks[world.rank]
        self.layers = {i: self.rule.make_conv_layer(i, self.net, config, self.device) if self.net else
                       self.rule.make_layer(i, self.dims, shape.num_classes, config, self.device)
                       for i in self.block}
        self.owner_of = [r for r, b in enumerate(self.blocks) for _ in b]
        self.score_layers = config.score_layers or ff.default_score_layers(len(config.layers))
        self.gathered = None  # every layer, on rank 0, as of the last evaluation
        self.gathered_heads = None  # and every auxiliary head (local-softmax)

    def modules(self) -> dict[int, torch.nn.Module]:
        """The block's trained layers by index: nn.Linear, or a conv net's ConvBlock."""
        return {i: rules.trained_module(self.layers[i]) for i in self.block}

    def heads(self) -> dict[int, torch.nn.Linear]:
        """The block's auxiliary heads (local-softmax), else empty (cwcomp's blocks have none)."""
        return {i: self.layers[i].head for i in self.block if hasattr(self.layers[i], "head")}

    def module_list(self) -> list[torch.nn.Module]:
        """The block's trained layers, first owned first (what --inject-nan poisons)."""
        return [rules.trained_module(self.layers[i]) for i in self.block]

    def conv_layer(self, index: int) -> torch.nn.Module:
        """A conv net's layer ``index`` (its initial weights), for rank 0 to receive a gathered one into."""
        return self.net.make_layer(index, 0)

    def conv_head(self, index: int) -> torch.nn.Module:
        """A conv net's auxiliary head of layer ``index``, for rank 0 to receive a gathered one into."""
        return self.net.auxiliary_head(index, 0, 0)

    def zero_losses(self) -> dict[int, torch.Tensor]:
        return {i: torch.zeros((), device=self.device) for i in self.block}

    def to_device(self, x: torch.Tensor, norms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A received message on this rank's device (a GPU's staging copy)."""
        if self.device.type != "cpu":
            return x.to(self.device, non_blocking=True), norms.to(self.device, non_blocking=True)
        return x, norms

    def message_rows(self, n: int) -> int:
        """Rows a minibatch of ``n`` examples makes per layer (ff: n pairs, 2n)."""
        return self.rule.message_rows(n)

    def empty_output(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the block's output of a minibatch of ``n`` examples goes when not straight into a message."""
        rows, width = self.message_rows(n), self.dims[self.block.stop]
        return torch.empty((rows, width), device=self.device), torch.empty((rows, 1), device=self.device)

    def step(self, x, norms, n: int, lr: float, out, norms_out, losses: dict) -> None:
        """One FF step of every layer of the block on a minibatch of ``n``
        pairs: ``x`` the block's input (rank 0: a PairBatch; else the previous
        block's output, divided here by its row ``norms``); the last layer's
        output goes to ``out`` and ``norms_out`` unnormalized (None on the
        last rank).  Adds each layer's loss to ``losses``.  A generic rule's
        ``norms`` is its side column, passed on as it is (``out`` gets the
        normalized activity)."""
        if self.generic:
            side = norms
            for i in self.block:
                self.layers[i].set_lr(lr)
                x, step_loss = self.rule.step(self.layers[i], x, side, n)
                losses[i] += step_loss
            if out is not None:
                out.copy_(x.reshape(out.shape))  # a block's [n, C, H, W] as the message's rows
                if side is not None:
                    norms_out.copy_(side)
            return
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
