"""What every backprop trainer shares (loop.py drives them): the Adam step
with the schedule's learning rate, the layers it holds, its checkpoint state.

A trainer owns ``module`` (the whole MLP on every rank, or this rank's stage
of it) and ``optimizer``; subclasses add ``rows(n) -> slice`` (the rows of an
n-row minibatch this rank feeds) and ``step(x, y, n, lr) -> loss share`` (a
0-d tensor: the rank's part of the minibatch-mean loss), and set ``attrs``
(for the results file) and ``replicated`` (every rank holds the whole model).
"""
from __future__ import annotations

import torch

from ...instrument.timer import EpochTimer
from ...core import optim


class Trainer:
    replicated = True
    state_key = "model"  # the module's key in a checkpoint (kept as first written: old checkpoints resume)

    def __init__(self, module: torch.nn.Module, lr: float, timer: EpochTimer):
        self.module, self.timer = module, timer
        self.optimizer = optim.adam(module.parameters(), lr)

    def adam_step(self, lr: float) -> None:
        """One optimizer step at ``lr`` (the cooldown schedule's value for this step), charged to compute."""
        with self.timer("compute"):
            optim.set_lr(self.optimizer, lr)
            self.optimizer.step()

    def owned(self) -> dict[int, torch.nn.Linear]:
        """{layer index: Linear} this rank holds (hidden layers, then the head); a replica holds them all."""
        return dict(enumerate((*self.module.hidden, self.module.head)))

    def state(self) -> dict:
        return {self.state_key: self.module.state_dict(), "optimizer": self.optimizer.state_dict()}

    def restore(self, state: dict) -> None:
        self.module.load_state_dict(state[self.state_key])
        optim.load_state(self.optimizer, state["optimizer"])

    def close(self) -> None:
        pass
