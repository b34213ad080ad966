"""A tiny discrete-event core: one generator per rank, cores shared fairly.

Each rank's program is a generator that yields what it does next:

- ``Work(seconds, category)``: CPU work that takes ``seconds`` when the rank
  has its threads' cores to itself;
- ``Wait(signal, category)``: block until ``signal`` has fired (a message
  arrived, a slot came back, a collective completed); the time blocked is
  charged to ``category``;
- ``Hold(seconds, category)``: block for a fixed time without using a core.

Signals fire at a time set by whoever fires them (``fire(signal, delay)``):
a message's arrival is its send time plus the link's cost.

Ranks that share cores slow each other (processor sharing, the fair share a
Linux CFS scheduler gives runnable threads): at any moment the working ranks
of a node demand ``threads`` cores each, and each progresses at rate
``min(1, cores / demand)``.  Waiting ranks are taken to leave the core to the
others (pffbench's waits yield, then sleep).  When no node can ever be
oversubscribed every rate is 1, and work completions go straight on the
event heap (fast path); otherwise the time between events is advanced as a
fluid (every working rank's remaining work shrinks at its rate).
"""
from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..instrument.timer import CATEGORIES


@dataclass(frozen=True)
class Work:
    seconds: float
    category: str = "compute"


@dataclass(frozen=True)
class Wait:
    signal: "Signal"
    category: str = "recv_wait"


@dataclass(frozen=True)
class Hold:
    seconds: float
    category: str = "sync"


class Signal:
    """Fires once, at ``time``; a wait on a fired signal returns at once."""
    __slots__ = ("time", "waiters")

    def __init__(self):
        self.time = None
        self.waiters = []


class Collective:
    """All of ``members`` must arrive; it completes ``cost`` seconds after the
    last one (a blocking allreduce, barrier, reduce).  ``after``: a collective
    this one queues behind (it starts no earlier than that one ends), as
    DDP's gradient buckets go one after another through the process group."""

    def __init__(self, sim: "Simulator", members: int, cost: float, after: "Collective | None" = None):
        self.sim, self.left, self.cost, self.done, self.after = sim, members, cost, Signal(), after
        self.end = None  # when it completes, known once the last member has arrived

    def arrive(self) -> Signal:
        self.left -= 1
        if self.left == 0:
            start = self.sim.now
            if self.after is not None:
                if self.after.end is None:
                    raise RuntimeError("a queued collective completed before the one it queues behind began")
                start = max(start, self.after.end)
            self.end = start + self.cost
            self.sim.fire(self.done, self.end - self.sim.now)
        return self.done


@dataclass
class Timeline:
    """What a simulation produced: per-rank seconds by category (plus idle),
    the time each rank finished, and (if traced) the events
    [n, 4]: rank, category index into timing.CATEGORIES, start, end."""
    spent: np.ndarray       # [ranks, len(CATEGORIES)]
    finish: np.ndarray      # [ranks]
    events: np.ndarray | None

    @property
    def makespan(self) -> float:
        return float(self.finish.max())


class Simulator:
    """Run one program per rank.  ``node_of[r]``: rank r's node;
    ``cores_per_node``; ``threads[r]``: cores a rank's work uses."""

    def __init__(self, node_of: list[int], cores_per_node: int, threads: list[int], trace: bool = False):
        self.node_of, self.cores, self.threads = list(node_of), cores_per_node, list(threads)
        demand = {}
        for r, n in enumerate(self.node_of):
            demand[n] = demand.get(n, 0) + self.threads[r]
        self.shared = any(d > cores_per_node for d in demand.values())
        self.trace = trace
        self.now = 0.0
        self._heap, self._seq = [], itertools.count()

    def signal(self) -> Signal:
        return Signal()

    def fire(self, signal: Signal, delay: float = 0.0) -> None:
        """``signal`` fires ``delay`` seconds from now."""
        heapq.heappush(self._heap, (self.now + max(delay, 0.0), next(self._seq), "fire", signal))

    def collective(self, members: int, cost: float, after: Collective | None = None) -> Collective:
        return Collective(self, members, cost, after)

    def run(self, programs: list) -> Timeline:
        """Run every program to its end; raises RuntimeError on a deadlock
        (a rank waiting on a signal nothing will fire)."""
        p = len(programs)
        self._programs = programs
        self._spent = np.zeros((p, len(CATEGORIES)))
        self._finish = np.zeros(p)
        self._events = [] if self.trace else None
        self._remaining, self._working = {}, {}  # rank -> work left (full-speed seconds); rank -> (start, category)
        self._ready = deque(range(p))
        self._done = 0
        while True:
            while self._ready:
                self._advance(self._ready.popleft())
            if not self._heap and not self._working:
                break
            self._step()
        if self._done < p:
            stuck = [r for r in range(p) if self._finish[r] == 0 and r not in self._working]
            raise RuntimeError(f"the simulated schedule deadlocked: ranks {stuck[:8]} wait forever")
        events = np.asarray(self._events, dtype=float).reshape(-1, 4) if self.trace else None
        return Timeline(self._spent, self._finish, events)

    def _record(self, rank: int, category: str, start: float, end: float) -> None:
        column = CATEGORIES.index(category)
        self._spent[rank, column] += end - start
        if self._events is not None and end > start:
            self._events.append((rank, column, start, end))

    def _advance(self, rank: int) -> None:
        program = self._programs[rank]
        while True:
            try:
                op = next(program)
            except StopIteration:
                self._finish[rank] = self.now
                self._done += 1
                return
            if isinstance(op, Work):
                if op.seconds <= 0:
                    continue
                self._working[rank] = (self.now, op.category)
                if self.shared:
                    self._remaining[rank] = op.seconds
                else:
                    heapq.heappush(self._heap, (self.now + op.seconds, next(self._seq), "work", rank))
                return
            if isinstance(op, Wait):
                if op.signal.time is not None:
                    continue
                op.signal.waiters.append((rank, self.now, op.category))
                return
            if isinstance(op, Hold):
                self._working[rank] = (self.now, op.category)  # no core used: not in _remaining
                heapq.heappush(self._heap, (self.now + op.seconds, next(self._seq), "hold", rank))
                return
            raise TypeError(f"a program yielded {op!r}, not Work, Wait or Hold")

    def _rates(self) -> dict[int, float]:
        demand = {}
        for r in self._remaining:
            demand[self.node_of[r]] = demand.get(self.node_of[r], 0) + self.threads[r]
        return {r: min(1.0, self.cores / demand[self.node_of[r]]) for r in self._remaining}

    def _step(self) -> None:
        """Advance to the next event (a work finishing or a timed event) and handle it."""
        t_heap = self._heap[0][0] if self._heap else float("inf")
        if self.shared and self._remaining:
            rates = self._rates()
            t_work = self.now + min(self._remaining[r] / rates[r] for r in self._remaining)
            t = min(t_heap, t_work)
            for r in self._remaining:
                self._remaining[r] -= rates[r] * (t - self.now)
            self.now = t
            for r in [r for r, left in self._remaining.items() if left <= 1e-12]:
                del self._remaining[r]
                self._end_work(r)
        else:
            self.now = t_heap
        while self._heap and self._heap[0][0] <= self.now:
            _, _, kind, payload = heapq.heappop(self._heap)
            if kind == "fire":
                signal = payload
                if signal.time is None:
                    signal.time = self.now
                    for rank, start, category in signal.waiters:
                        self._record(rank, category, start, self.now)
                        self._ready.append(rank)
                    signal.waiters = []
            else:
                self._end_work(payload)

    def _end_work(self, rank: int) -> None:
        start, category = self._working.pop(rank)
        self._record(rank, category, start, self.now)
        self._ready.append(rank)
