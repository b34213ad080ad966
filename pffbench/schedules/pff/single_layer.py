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


def train(config, world, shape, dataset=None, on_epoch=None):
    pff = Chapters(config, world, shape, dataset)
    post = Post(world.comm, pff.slot_sizes())
    num_layers, num_chapters, size = pff.num_layers, pff.num_chapters, world.size
    mine = range(num_layers) if size == 1 else range(world.rank, world.rank + 1)
    owner = (lambda index: 0) if size == 1 else (lambda index: index)
    last_rank = size - 1

    def consumers(index: int, chapter: int) -> set[int]:
        """Who gets layer ``index`` of ``chapter``: the owners of later layers now,
        its own owner next chapter, rank 0 (to evaluate) after the last."""
        ranks = {owner(later) for later in range(index + 1, num_layers)}
        if chapter + 1 < num_chapters:
            ranks.add(owner(index))
        else:
            ranks.add(0)
        return ranks

    blocks = [range(num_layers)] if size == 1 else [range(r, r + 1) for r in range(size)]
    # rank 0 runs up to N chapters ahead of the last rank: the agreement lags as much, so as not to hold it back
    bounds = Boundaries(pff, post, blocks, lag=size)
    # the last rank's published scores that chapters still to run will read: (chapter, flat scores)
    unread = deque()
    for slot, state in bounds.carry.items():  # resumed: each slot's next reader gets it again
        if slot == pff.scores_slot:  # those of chapters start - N .. start - 1, in order
            for offset, flat in enumerate(state):
                post.publish(slot, flat, range(size))
                unread.append((max(0, bounds.start - size) + offset, flat))
        else:
            post.publish(slot, state, {world.rank})
    pff.start()
    head = None
    for chapter in range(bounds.start, num_chapters):
        first, last = pff.first_epoch(chapter), pff.last_epoch(chapter)
        if chapter >= size and pff.negatives.adaptive:  # the scores of chapter - N
            with pff.clock("recv_wait", first):
                scores = post.get(pff.scores_slot, last_rank)
            pff.negatives.observe(torch.from_numpy(scores).view(-1, shape.num_classes))
        xs = pff.inputs(chapter)
        layers = []
        for index in range(mine.stop):
            with pff.clock("recv_wait", first):
                state = None if index in mine and chapter == 0 else post.get(index, owner(index))
            layer = pff.kind.build(index, state)
            if index in mine:
                pff.train(layer, index, chapter, xs)
                with pff.clock("send_wait", last):
                    post.publish(index, pff.state(layer), consumers(index, chapter))
            elif chapter + 1 < num_chapters:
                post.expect(index, owner(index))  # next chapter's copy arrives while we train
            if index + 1 < mine.stop:
                xs = pff.forward(layer, xs, chapter)
            layers.append(layer)
        carry = {index: pff.state(layers[index]) for index in mine}
        if world.rank == last_rank:
            if pff.kind.has_head:
                with pff.clock("recv_wait", last):
                    head = pff.kind.build_head(None if chapter == 0 else post.get(pff.head_slot, last_rank))
            scores = pff.end_chapter(chapter, layers, head, next_chapter=chapter + size)
            with pff.clock("send_wait", last):
                if head is not None:
                    carry[pff.head_slot] = pff.state(head)
                    post.publish(pff.head_slot, carry[pff.head_slot], {last_rank if chapter + 1 < num_chapters else 0})
                if scores is not None:
                    unread.append((chapter, scores.reshape(-1)))
                    post.publish(pff.scores_slot, unread[-1][1], range(size))
            while unread and unread[0][0] < chapter + 1 - size:  # read by chapter + 1 at the latest
                unread.popleft()
            if unread:
                carry[pff.scores_slot] = torch.stack([flat for _, flat in unread])
        bounds.after(chapter, carry)

    bounds.close()
    final_layers = final_head = None
    with pff.clock("recv_wait", config.epochs - 1):
        if world.is_first:
            final_layers = [pff.kind.build(i, post.get(i, owner(i))) for i in range(num_layers)]
            if pff.kind.has_head:
                final_head = pff.kind.build_head(post.get(pff.head_slot, last_rank))
        post.flush()
    return pff.finish(final_layers, final_head, blocks, on_epoch=on_epoch)
