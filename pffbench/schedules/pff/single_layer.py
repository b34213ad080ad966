"""Single-Layer PFF: rank i owns layer i (N = L; one rank owning every layer
is the sequential twin).

Per chapter, rank i gets layers 0..i-1 as published for this chapter,
recomputes its inputs (positive and negative) through them locally, trains
layer i for C epochs and publishes it for this chapter.  Rank i starts a
chapter as soon as rank i-1 has published; only weights travel.  The last
rank also trains the softmax head, and for adaptive negatives computes the
label scores of the new model and publishes them to every rank.  Chapter c's
adaptive negatives come from the model after chapter c - N: the last rank
finishes chapter c - N as rank 0 starts chapter c, so no rank waits for
them (with c - 1, every rank would wait for the whole previous chapter and
the schedule would run serially).  N = 1 is the sequential twin, with the
previous chapter's; All-Layers' negatives lag N chapters as well, and the
two schedules give the same weights.
Between chapters, ``Boundaries`` checkpoints, resumes, and stops every rank
together on a signal or NaN.
"""
from __future__ import annotations

from collections import deque

import torch

from .boundaries import Boundaries
from .chapters import Chapters
from .communications import Post


class SingleLayer:
    """One rank's routing: which layers it trains (``mine``: all on 1 rank,
    else layer ``rank``), who owns each layer, who gets each published one."""

    def __init__(self, pff: Chapters, post: Post):
        self.pff, self.post = pff, post
        self.rank, self.size = pff.world.rank, pff.world.size
        self.mine = range(pff.num_layers) if self.size == 1 else range(self.rank, self.rank + 1)
        self.last_rank = self.size - 1
        self.blocks = [range(pff.num_layers)] if self.size == 1 else [range(r, r + 1) for r in range(self.size)]
        self.unread = deque()  # the last rank's published scores that chapters still to run read: (chapter, flat)

    def owner(self, index: int) -> int:
        return 0 if self.size == 1 else index

    def consumers(self, index: int, chapter: int) -> set[int]:
        """Who gets layer ``index`` of ``chapter``: the owners of later layers now,
        its own owner next chapter, rank 0 (to evaluate) after the last."""
        ranks = {self.owner(later) for later in range(index + 1, self.pff.num_layers)}
        if chapter + 1 < self.pff.num_chapters:
            ranks.add(self.owner(index))
        else:
            ranks.add(0)
        return ranks

    def republish(self, bounds: Boundaries) -> None:
        """Resumed: each slot's next reader gets it again."""
        for slot, state in bounds.carry.items():
            if slot == self.pff.scores_slot:  # those of chapters start - N .. start - 1, in order
                for offset, flat in enumerate(state):
                    self.post.publish(slot, flat, range(self.size))
                    self.unread.append((max(0, bounds.start - self.size) + offset, flat))
            else:
                self.post.publish(slot, state, {self.rank})

    def chapter(self, chapter: int, head):
        """This rank's part of ``chapter``: get layers 0..i-1, recompute the
        inputs through them, train and publish its own.  Returns (carry, head)."""
        pff, post = self.pff, self.post
        first, last = pff.first_epoch(chapter), pff.last_epoch(chapter)
        if chapter >= self.size and pff.negatives.adaptive:  # the scores of chapter - N
            with pff.timer("recv_wait", first):
                scores = post.get(pff.scores_slot, self.last_rank)
            pff.negatives.observe(torch.from_numpy(scores).view(-1, pff.shape.num_classes))
        xs = pff.inputs(chapter)
        layers = []
        for index in range(self.mine.stop):
            with pff.timer("recv_wait", first):
                state = None if index in self.mine and chapter == 0 else post.get(index, self.owner(index))
            layer = pff.kind.build(index, state)
            if index in self.mine:
                pff.train(layer, index, chapter, xs)
                with pff.timer("send_wait", last):
                    post.publish(index, pff.state(layer), self.consumers(index, chapter))
            elif chapter + 1 < pff.num_chapters:
                post.expect(index, self.owner(index))  # next chapter's copy arrives while we train
            if index + 1 < self.mine.stop:
                xs = pff.forward(layer, xs, chapter)
            layers.append(layer)
        carry = {index: pff.state(layers[index]) for index in self.mine}
        if self.rank == self.last_rank:
            head = self.end_chapter(chapter, layers, head, carry)
        return carry, head

    def end_chapter(self, chapter: int, layers: list, head, carry: dict):
        """The last rank, after its layer: the softmax head and the scores
        adaptive negatives read, published; returns the head."""
        pff, post, last = self.pff, self.post, self.pff.last_epoch(chapter)
        if pff.kind.has_head:
            with pff.timer("recv_wait", last):
                head = pff.kind.build_head(None if chapter == 0 else post.get(pff.head_slot, self.last_rank))
        scores = pff.end_chapter(chapter, layers, head, next_chapter=chapter + self.size)
        with pff.timer("send_wait", last):
            if head is not None:
                carry[pff.head_slot] = pff.state(head)
                post.publish(pff.head_slot, carry[pff.head_slot],
                             {self.last_rank if chapter + 1 < pff.num_chapters else 0})
            if scores is not None:
                self.unread.append((chapter, scores.reshape(-1)))
                post.publish(pff.scores_slot, self.unread[-1][1], range(self.size))
        while self.unread and self.unread[0][0] < chapter + 1 - self.size:  # read by chapter + 1 at the latest
            self.unread.popleft()
        if self.unread:
            carry[pff.scores_slot] = torch.stack([flat for _, flat in self.unread])
        return head

    def final(self):
        """Rank 0 gets the last chapter's layers (and head) to evaluate: (layers, head), None elsewhere."""
        pff, post = self.pff, self.post
        layers = head = None
        with pff.timer("recv_wait", pff.config.epochs - 1):
            if pff.world.is_first:
                layers = [pff.kind.build(i, post.get(i, self.owner(i))) for i in range(pff.num_layers)]
                if pff.kind.has_head:
                    head = pff.kind.build_head(post.get(pff.head_slot, self.last_rank))
            post.flush()
        return layers, head


def train(config, world, shape, dataset=None, on_epoch=None):
    pff = Chapters(config, world, shape, dataset)
    post = Post(world.comm, pff.slot_sizes())
    routing = SingleLayer(pff, post)
    # rank 0 runs up to N chapters ahead of the last rank: the agreement lags as much, so as not to hold it back
    bounds = Boundaries(pff, post, routing.blocks, lag=world.size)
    routing.republish(bounds)
    pff.start()
    head = None
    for chapter in range(bounds.start, pff.num_chapters):
        carry, head = routing.chapter(chapter, head)
        bounds.after(chapter, carry)
    bounds.close()
    layers, head = routing.final()
    return pff.finish(layers, head, routing.blocks, on_epoch=on_epoch)
