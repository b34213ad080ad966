"""Negative labels for the paper's PFF variants, one set per chapter (pure torch).

A negative example is a training image carrying a wrong label.  Strategies:

- random: a fresh uniformly random wrong label per example every chapter;
- fixed: drawn once, the same in every chapter;
- adaptive: the most-predicted incorrect label under the model at the end of
  an earlier chapter: the previous one on 1 rank, chapter c - N on N ranks
  in Single-Layer and All-Layers (random until there is one);
- adaptive-sampled: Hinton's variant, a wrong label sampled from the model's
  softmax over the label scores.  Hinton draws per minibatch; here every
  example gets a fresh draw each chapter, which is the same thing when a
  chapter is one epoch (the paper's 100 epochs in 100 splits) and lets the
  negative inputs be computed once per chapter, as the paper's ranks do.

Every draw comes from a generator keyed by (seed, chapter), never by rank, so
whichever rank computes a chapter's negatives gets the same ones.
"""
from __future__ import annotations

import torch

from ..core.seeds import generator  # noqa: F401  (the keyed draws, re-exported)

STRATEGIES = ("random", "fixed", "adaptive", "adaptive-sampled")
FIXED_CHAPTER = -1  # the key of the one draw that fixed negatives make


def random_wrong_labels(labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random label different from the true one, per example."""
    offset = torch.randint(1, num_classes, labels.shape, generator=generator)
    return (labels + offset.to(labels.device)) % num_classes


def most_predicted_wrong(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """argmax over the incorrect labels of each row of ``scores`` [N, classes]."""
    masked = scores.clone()
    masked[torch.arange(len(labels)), labels] = float("-inf")
    return masked.argmax(dim=1)


def sampled_wrong(logits: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A wrong label per row, drawn from the softmax of ``logits`` over the incorrect labels."""
    masked = logits.double().clone()
    masked[torch.arange(len(labels)), labels] = float("-inf")
    return torch.multinomial(torch.softmax(masked, dim=1), 1, generator=generator).squeeze(1)


class Negatives:
    """The wrong labels of one rank's training examples, chapter by chapter.

    ``observe(scores)`` hands the adaptive strategies the model's label scores
    (logits: goodness times the loss's sharpness, or the softmax head's
    output) on these examples, for the chapters that follow.
    """

    def __init__(self, strategy: str, labels: torch.Tensor, num_classes: int, seed: int):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown negative strategy {strategy!r}")
        self.strategy, self.labels, self.num_classes, self.seed = strategy, labels.cpu(), num_classes, seed
        self.scores = None

    @property
    def adaptive(self) -> bool:
        return self.strategy.startswith("adaptive")

    def observe(self, scores: torch.Tensor) -> None:
        if torch.isfinite(scores).all():  # a diverged model's scores would break the draws; that run is failing
            self.scores = scores.cpu()

    def for_chapter(self, chapter: int) -> torch.Tensor:
        if self.strategy == "adaptive" and self.scores is not None:
            return most_predicted_wrong(self.scores, self.labels)
        key = FIXED_CHAPTER if self.strategy == "fixed" else chapter
        draw = generator(self.seed, key)
        if self.strategy == "adaptive-sampled" and self.scores is not None:
            return sampled_wrong(self.scores, self.labels, draw)
        return random_wrong_labels(self.labels, self.num_classes, draw)
