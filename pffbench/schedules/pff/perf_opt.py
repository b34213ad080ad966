"""Performance-Optimized PFF: each layer trains with its own softmax head.

A layer and its head are trained together by backprop through those two
only, to classify; there is no negative data, and the input carries the
neutral label.  Otherwise the schedule is All-Layers' (chapters round-robin,
layer by layer, a wavefront over the ranks); a published layer carries its
head.  Prediction uses the last layer's head, or all heads together (their
probabilities multiplied): both are reported, the second as test accuracy.
"""
from __future__ import annotations

from ...core import wavefront as routing
from .all_layers import RoundRobin, wavefront
from .chapters import Chapters
from .communications import Post
from .kinds import PerfOptKind


def train(config, world, shape, dataset=None, on_epoch=None):
    kind = PerfOptKind(config, [shape.num_features, *config.layers], shape.num_classes, world.device(config.device))
    pff = Chapters(config, world, shape, dataset, kind=kind)
    exchange = RoundRobin(Post(world.comm, pff.slot_sizes()), world.size, pff.num_chapters, range(pff.num_layers))
    return wavefront(pff, exchange, routing.chapters_of(world.rank, world.size, pff.num_chapters), on_epoch,
                     blocks=[range(pff.num_layers)] * world.size)
