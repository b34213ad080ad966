"""All-Layers PFF: every rank trains the whole network, chapters round-robin.

Rank c mod N trains chapter c.  Within a chapter, for each layer: get the
layer as published in the previous chapter, train it C epochs, publish it,
forward the data through it, go on to the next layer.  Rank i+1 starts layer l
of chapter c+1 as soon as rank i has published layer l of chapter c: the
chapters move through the ranks as a wavefront.  Each rank computes its own
adaptive negatives after each of its chapters, for its next one.

Federated and Performance-Optimized PFF reuse this loop (``wavefront``) with
another exchange or another kind of layer.  Between chapters, ``Boundaries``
checkpoints, resumes, and stops every rank together on a signal or NaN.
"""
from __future__ import annotations

from ...core import wavefront as routing
from .boundaries import Boundaries
from .chapters import Chapters
from .communications import Post


class RoundRobin:
    """Routing of All-Layers (core/wavefront.py): chapter c gets from rank
    (c-1) mod N and publishes to rank (c+1) mod N; after the last chapter, to
    rank 0, which evaluates."""

    def __init__(self, post: Post, size: int, num_chapters: int, slots):
        self.post, self.size, self.num_chapters, self.slots = post, size, num_chapters, list(slots)

    def expect(self, chapter: int) -> None:
        source = routing.source(chapter, self.size)
        if source is not None:
            for slot in self.slots:
                self.post.expect(slot, source)

    def get(self, slot: int, chapter: int):
        source = routing.source(chapter, self.size)
        return None if source is None else self.post.get(slot, source)

    def publish(self, slot: int, chapter: int, state) -> None:
        self.post.publish(slot, state, [routing.destination(chapter, self.size, self.num_chapters)])

    def flush(self) -> None:
        self.post.flush()

    def drain(self) -> None:
        self.post.drain()


def wavefront(pff: Chapters, exchange, my_chapters, on_epoch=None, **finish) -> object:
    """Train ``my_chapters`` layer by layer; ``exchange`` gets and publishes
    each slot as of a chapter.  Returns rank 0's TrainResult."""
    # a round is every rank's next chapter: N of them round-robin, one when every rank trains every chapter
    bounds = Boundaries(pff, exchange, finish["blocks"], per_round=my_chapters.step,
                        loss_divisor=finish.get("loss_divisor", 1))
    if bounds.start - 1 in my_chapters:  # resumed: the next chapter starts from what this rank published last
        for slot, state in bounds.carry.items():
            exchange.publish(slot, bounds.start - 1, state)
    pff.start()
    for chapter in my_chapters:
        if chapter < bounds.start:
            continue
        exchange.expect(chapter)
        xs = pff.inputs(chapter)
        layers = []
        for index in range(pff.num_layers):
            with pff.timer("recv_wait", pff.first_epoch(chapter)):
                state = exchange.get(index, chapter)
            layer = pff.kind.build(index, state)
            pff.train(layer, index, chapter, xs)
            with pff.timer("send_wait", pff.last_epoch(chapter)):
                exchange.publish(index, chapter, pff.state(layer))
            if index + 1 < pff.num_layers:
                xs = pff.forward(layer, xs, chapter)
            layers.append(layer)
        head = None
        if pff.kind.has_head:
            with pff.timer("recv_wait", pff.last_epoch(chapter)):
                head = pff.kind.build_head(exchange.get(pff.head_slot, chapter))
        scores = pff.end_chapter(chapter, layers, head, next_chapter=chapter + my_chapters.step)
        if head is not None:
            with pff.timer("send_wait", pff.last_epoch(chapter)):
                exchange.publish(pff.head_slot, chapter, pff.state(head))
        if scores is not None:
            pff.negatives.observe(scores)
        carry = {index: pff.state(layer) for index, layer in enumerate(layers)}
        bounds.after(chapter, carry if head is None else {**carry, pff.head_slot: pff.state(head)})

    bounds.close()
    last, final = pff.config.epochs - 1, pff.num_chapters
    layers = head = None
    with pff.timer("recv_wait", last):
        if pff.world.is_first:
            layers = [pff.kind.build(i, exchange.get(i, final)) for i in range(pff.num_layers)]
            if pff.kind.has_head:
                head = pff.kind.build_head(exchange.get(pff.head_slot, final))
        exchange.flush()
    return pff.finish(layers, head, on_epoch=on_epoch, **finish)


def train(config, world, shape, dataset=None, on_epoch=None):
    pff = Chapters(config, world, shape, dataset)
    sizes = pff.slot_sizes()
    exchange = RoundRobin(Post(world.comm, sizes), world.size, pff.num_chapters,
                          [s for s in sizes if s != pff.scores_slot])
    return wavefront(pff, exchange, routing.chapters_of(world.rank, world.size, pff.num_chapters), on_epoch,
                     blocks=[range(pff.num_layers)] * world.size)
