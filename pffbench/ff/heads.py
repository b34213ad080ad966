"""Softmax heads (pure torch): the paper's Softmax classifier on top of FF
layers, and the Performance-Optimized layer that trains with its own head."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import layer as ff
from ..core import optim


@torch.no_grad()
def features(linears, x: torch.Tensor, num_classes: int, score_layers, batch_size: int = 1000) -> torch.Tensor:
    """Normalized activities of ``score_layers`` for the neutral-label input,
    side by side: what the Softmax classifier reads.  The neutral label keeps
    the features free of any label guess."""
    out = []
    for i in range(0, x.shape[0], batch_size):
        h = ff.normalize(ff.embed_labels(x[i:i + batch_size], None, num_classes))
        parts = []
        for index, linear in enumerate(linears):
            h = ff.normalize(F.relu(linear(h)))
            if index in score_layers:
                parts.append(h)
        out.append(torch.cat(parts, dim=1))
    return torch.cat(out)


def zero_linear(in_features: int, out_features: int) -> torch.nn.Linear:
    """A head starting at zero predicts uniformly: no seed needed, the same on every rank."""
    linear = torch.nn.Linear(in_features, out_features)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
    return linear


class SoftmaxHead:
    """Linear classifier trained by cross-entropy with its own Adam; the FF
    layers underneath only supply (detached) features."""

    def __init__(self, linear: torch.nn.Linear, lr: float):
        self.linear = linear
        self.optimizer = optim.adam(linear.parameters(), lr)

    def parameters(self):
        return [self.linear.weight, self.linear.bias]

    def set_lr(self, lr: float) -> None:
        optim.set_lr(self.optimizer, lr)

    def train_step(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(self.linear(x), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class PerfOptLayer:
    """Performance-Optimized PFF: Linear+ReLU and a softmax head on its
    normalized output, trained together by backprop through those two only,
    on positive data only.  The next layer sees the normalized output."""

    def __init__(self, linear: torch.nn.Linear, head: torch.nn.Linear, lr: float):
        self.linear, self.head = linear, head
        self.optimizer = optim.adam(self.parameters(), lr)

    def parameters(self):
        return [self.linear.weight, self.linear.bias, self.head.weight, self.head.bias]

    def set_lr(self, lr: float) -> None:
        optim.set_lr(self.optimizer, lr)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ff.normalize(F.relu(self.linear(x)))

    def train_step(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(self.head(self.forward(x)), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


@torch.no_grad()
def perf_opt_log_probs(layers, x: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    """Every head's log-probabilities for the neutral-label input ``x`` (raw)."""
    h = ff.normalize(ff.embed_labels(x, None, num_classes))
    out = []
    for layer in layers:
        h = layer.forward(h)
        out.append(F.log_softmax(layer.head(h), dim=1))
    return out


@torch.no_grad()
def perf_opt_accuracy(layers, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                      batch_size: int = 1000) -> tuple[float, float]:
    """(last head, all heads) accuracy; all heads multiply their probabilities."""
    last = every = 0
    for i in range(0, x.shape[0], batch_size):
        log_probs = perf_opt_log_probs(layers, x[i:i + batch_size], num_classes)
        target = y[i:i + batch_size]
        last += (log_probs[-1].argmax(1) == target).sum().item()
        every += (sum(log_probs).argmax(1) == target).sum().item()
    return last / x.shape[0], every / x.shape[0]
