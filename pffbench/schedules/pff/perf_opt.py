"""Performance-Optimized PFF: each layer trains with its own softmax head.

A layer and its head are trained together by backprop through those two
only, to classify; there is no negative data, and the input carries the
neutral label.  Otherwise the schedule is All-Layers' (chapters round-robin,
layer by layer, a wavefront over the ranks); a published layer carries its
head.  Prediction uses the last layer's head, or all heads together (their
probabilities multiplied): both are reported, the second as test accuracy.
"""
from __future__ import annotations

import torch

from . import ff, heads
from .all_layers import RoundRobin, wavefront
from .chapters import Chapters, load_flat
from .pff_communications import Post

HEAD_SEED_OFFSET = 1000  # head l's initial weights are keyed like a layer 1000 + l


class PerfOptKind:
    uses_negatives = False
    has_head = False  # no separate classifier: every layer has its own

    def __init__(self, config, dims: list[int], num_classes: int, device: torch.device):
        self.config, self.dims, self.num_classes, self.device = config, dims, num_classes, device

    def build(self, index: int, state=None) -> heads.PerfOptLayer:
        seed = self.config.seed
        linear = ff.make_linear(self.dims[index], self.dims[index + 1], seed, index).to(self.device)
        head = ff.make_linear(self.dims[index + 1], self.num_classes, seed, HEAD_SEED_OFFSET + index).to(self.device)
        layer = heads.PerfOptLayer(linear, head, self.config.lr)
        if state is not None:
            load_flat(layer.parameters(), state)
        return layer

    @staticmethod
    def parameters(layer):
        return layer.parameters()

    def inputs(self, x: torch.Tensor, y: torch.Tensor, wrong) -> tuple:
        return (ff.normalize(ff.embed_labels(x, None, self.num_classes)),)

    @staticmethod
    def step(layer, xs: tuple, labels: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return layer.train_step(xs[0][rows], labels[rows])

    @staticmethod
    @torch.no_grad()
    def forward(layer, xs: tuple) -> tuple:
        return (layer.forward(xs[0]),)

    def evaluate(self, layers, head, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict]:
        last, every = heads.perf_opt_accuracy(layers, x, y, self.num_classes)
        return every, {"classifier": "per-layer softmax heads", "accuracy_last_head": last,
                       "accuracy_all_heads": every}


def train(config, world, shape, dataset=None, on_epoch=None):
    kind = PerfOptKind(config, [shape.num_features, *config.layers], shape.num_classes, world.device(config.device))
    pff = Chapters(config, world, shape, dataset, kind=kind)
    exchange = RoundRobin(Post(world.comm, pff.slot_sizes()), world.size, pff.num_chapters, range(pff.num_layers))
    return wavefront(pff, exchange, range(world.rank, pff.num_chapters, world.size), on_epoch,
                     blocks=[range(pff.num_layers)] * world.size)
