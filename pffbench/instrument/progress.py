"""What a run prints while it trains, on rank 0 only: a start line, progress
within long epochs, a line per epoch (or per chapter of rank 0's, in the PFF
variants) with the true wall time since training started and an ETA, and the
line that answers a first Ctrl-C/SIGTERM.

Within an epoch: a tqdm bar when stderr is a terminal; in a log file (stderr
not a TTY: Slurm, a pipe) a plain line every ``LOG_INTERVAL_S`` seconds
instead, as a bar's carriage returns make logs unreadable.

The schedules reach the one ``Progress`` of the process through ``tick`` and
``chapter_done`` (no-ops on the other ranks, under ``--quiet``, and in
tests that call a schedule directly), so no train() signature carries it.

ETA: the work left, at the rate of the work done so far (wall time, which
includes the evaluations already made), plus the evaluations still due,
each estimated as the forward passes it takes relative to an epoch's:
``classes x test rows`` label-conditioned passes against ``2 x train rows``
(positive and negative) passes of about 3 passes' cost each (forward,
backward, update).  An estimate, said as "about".
"""
from __future__ import annotations

import sys
import time

import numpy as np

from ..core.words import plural  # noqa: F401  (the commands import it from here too)

LOG_INTERVAL_S = 10.0   # a plain progress line at most this often when stderr is not a terminal
BAR_AFTER_S = 2.0       # no bar for epochs shorter than this: one line per epoch is enough

_CURRENT = None  # the process's Progress (rank 0, not --quiet), or None


def current():
    return _CURRENT


def tick(epoch: int, done: int, total: int, where: str = "") -> None:
    """Minibatch ``done`` of ``total`` of ``epoch`` is done (a no-op without a Progress);
    ``where``: what trains (PFF: "chapter 2/8, layer 1")."""
    if _CURRENT is not None:
        _CURRENT.minibatch(epoch, done, total, where)


def chapter_done(chapter: int, work_done: int, work_total: int, drain: float = 0.0) -> None:
    """Rank 0 finished its ``work_done``-th of ``work_total`` units of work
    (PFF: its chapters); the last rank ends about ``drain`` units after rank 0."""
    if _CURRENT is not None:
        _CURRENT.chapter(chapter, work_done, work_total, drain)


def stops_after(lag: int) -> None:
    """PFF: a first signal stops the run ``lag`` rounds of chapters after the round in progress (the ranks'
    lagged agreement, schedules/pff/boundaries.py), which the stop line's estimate counts."""
    if _CURRENT is not None:
        _CURRENT.round_lag = lag


def resumed(epochs_done: int) -> None:
    """The run resumed after ``epochs_done`` epochs: its rate counts only the epochs it runs."""
    if _CURRENT is not None:
        _CURRENT.resume(epochs_done)


class Progress:
    """Rank 0's progress lines.  ``epochs``: the run's; ``eval_share``: an
    evaluation's cost in epochs (see the module docstring); ``evals_left``:
    how many evaluations the run makes."""

    def __init__(self, epochs: int, num_train: int, eval_share: float, evals: int, chapters: int | None = None,
                 stream=None, evaluated_on: str = "test"):
        self.epochs, self.num_train, self.eval_share, self.evals_left = epochs, num_train, eval_share, evals
        self.evaluated_on = evaluated_on  # the rows its accuracies are of: "test", or "validation" (--validation)
        self.chapters = chapters
        self.stream = stream or sys.stdout
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.fraction = 0.0           # of the run's training done
        self.fraction_at_start = 0.0  # a resumed run starts mid-way: its rate counts only what it ran
        self.epoch = 0                # the epoch (or chapter) in progress
        self.drain = 0.0              # PFF: the run ends this share of the run after rank 0's work
        self.round_lag = 0            # PFF: rounds a first signal runs on after the round in progress
        self._rounds, self._round_end = 0, None  # PFF: rank 0's rounds of chapters in all, when its last one ended
        self._rounds_run = 0          # PFF: rounds rank 0 finished in this process (a resumed run: since resuming)
        self._last_line, self._bar = self.t0, None

    def install(self) -> "Progress":
        global _CURRENT
        _CURRENT = self
        return self

    def uninstall(self) -> None:
        global _CURRENT
        self._close_bar()
        _CURRENT = None

    def start(self, fraction_done: float = 0.0) -> None:
        """Training starts now (a resumed run: with ``fraction_done`` of it done)."""
        self.t0 = self._last_line = time.perf_counter()
        self.fraction = self.fraction_at_start = fraction_done

    def resume(self, epochs_done: int) -> None:
        self.fraction = self.fraction_at_start = epochs_done / self.epochs
        self.epoch = epochs_done

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def eta(self) -> float | None:
        """Seconds left, evaluations included; None before any work is done."""
        ran = self.fraction - self.fraction_at_start
        if ran <= 0:
            return None
        per_epoch = self.elapsed() / (ran * self.epochs)
        return per_epoch * self.epochs * (1 - self.fraction + self.drain) + \
            per_epoch * self.eval_share * self.evals_left

    def _print(self, line: str) -> None:
        self._close_bar()
        print(line, file=self.stream, flush=True)

    def _times(self) -> str:
        eta = self.eta()
        return f"elapsed {self.elapsed():7.1f}s  ETA " + ("   ?" if eta is None else f"{eta:6.1f}s")

    # --- within an epoch ---------------------------------------------------------------------------------------
    def minibatch(self, epoch: int, done: int, total: int, where: str = "") -> None:
        self.epoch = epoch
        now = time.perf_counter()
        if self.tty:
            if self._bar is None and now - self._last_line > BAR_AFTER_S:
                from tqdm import tqdm
                self._bar = tqdm(total=total, initial=done, desc=f"{where}{', ' if where else ''}epoch {epoch + 1}",
                                 unit="batch", leave=False,
                                 file=sys.stderr, mininterval=0.5)
            elif self._bar is not None:
                self._bar.update(done - self._bar.n)
        elif now - self._last_line > LOG_INTERVAL_S:
            self._last_line = now
            print(f"  {where}{', ' if where else ''}epoch {epoch + 1}/{self.epochs}: {done}/{total} minibatches  "
                  f"elapsed {self.elapsed():.1f}s",
                  file=self.stream, flush=True)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._last_line = time.perf_counter()

    # --- epochs and chapters -----------------------------------------------------------------------------------
    def __call__(self, epoch: int, loss: np.ndarray, accuracy: float, seconds: float) -> None:
        """The pipeline's and backprop's on_epoch: ``epoch`` ended, its training took ``seconds``."""
        self.fraction, self.epoch = (epoch + 1) / self.epochs, epoch + 1
        if epoch + 1 == self.epochs:
            self.evals_left = 0
        acc = f"  {self.evaluated_on} acc {100 * accuracy:6.2f}%" if np.isfinite(accuracy) else ""
        self._print(f"epoch {epoch + 1:>3}/{self.epochs}  loss {np.sum(loss):8.4f}  "
                    f"{self.num_train / max(seconds, 1e-9):9.0f} samples/s  {self._times()}{acc}")

    def chapter(self, chapter: int, work_done: int, work_total: int, drain: float = 0.0) -> None:
        """PFF: rank 0 finished its share of ``chapter``; the other ranks' shares are alike and staggered,
        the last one ``drain`` units of rank 0's work behind."""
        self.fraction, self.epoch, self.drain = work_done / work_total, chapter + 1, drain / work_total
        self._rounds, self._round_end, self._rounds_run = work_total, time.perf_counter(), self._rounds_run + 1
        self._print(f"chapter {chapter + 1:>3}/{self.chapters} done on rank 0 ({work_done}/{work_total} of its "
                    f"work)  {self._times()}")

    def final_epochs(self, loss: np.ndarray, accuracy: np.ndarray) -> None:
        """PFF: the epochs' losses, known only once every rank reported ([layers, epochs])."""
        self._close_bar()
        for epoch in range(loss.shape[1]):
            acc = f"  {self.evaluated_on} acc {100 * accuracy[epoch]:6.2f}%" if np.isfinite(accuracy[epoch]) else ""
            print(f"epoch {epoch + 1:>3}/{self.epochs}  loss {np.nansum(loss[:, epoch]):8.4f}{acc}",
                  file=self.stream, flush=True)

    def until_stop(self) -> float | None:
        """About how many seconds a first signal now leaves the run (None before its pace is known): at most
        an epoch's time in the pipeline and the baselines (they stop at the end of the epoch in progress);
        in PFF the rest of the round of chapters in progress and ``round_lag`` more (the ranks agree on a
        signal that many rounds late, so that none waits for another), at rank 0's pace per round, unless
        that is past the run's last boundary with a verdict: then the run finishes (``eta``)."""
        ran = self.fraction - self.fraction_at_start
        if ran <= 0:
            return None
        if self._round_end is None:
            return self.elapsed() / (ran * self.epochs)
        if round(self.fraction * self._rounds) + self.round_lag > self._rounds - 2:  # boundaries.Boundaries.after
            return self.eta()
        per_round = (self._round_end - self.t0) / self._rounds_run
        return max(0.0, (1 + self.round_lag) * per_round - (time.perf_counter() - self._round_end))

    def stop_line(self, signal_name: str, boundary: str) -> str:
        """What a first signal answers: when the run stops and how to stop it at once."""
        per = self.until_stop()
        about = "" if per is None else f", in about {per:.0f}s" if per >= 1 else ", in under a second"
        return (f"pffbench: {signal_name} received: stopping at the end of {boundary}{about}; "
                f"send it again to abort at once (nothing more is recorded then)")


def start_line(config, world_size: int, shape, dims: list[int] | str, rule: str | None, blocks_text: str, source: str,
               batches: int, chapters: int | None) -> str:
    """The run's first line: what trains (``dims``: the net's widths, the rule's input width first, or a conv
    net's shapes as text, launch/console.net_text; ``rule``: the
    learning rule named after the variant, None to name none), on what data (and where it was read from), on how
    many ranks."""
    work = f"{plural(config.epochs, 'epoch')} of {plural(batches, 'minibatch', 'minibatches')}"
    if chapters:
        work += f" in {plural(chapters, 'chapter')}"
    rule = f" x {rule}" if rule else ""
    return (f"pffbench: {config.variant}{rule} on {config.dataset} ({shape.num_train} training rows, from {source}); "
            f"net {dims}; {plural(world_size, 'rank')}, {blocks_text}; {work}")


def for_run(config, world_size: int, shape, dims: list[int] | str, rule: str | None, source: str, batches: int,
            eval_share: float, evals: int, blocks_text: str, chapters: int | None) -> Progress | None:
    """Rank 0's Progress (printing the start line, see ``start_line``), installed; None with --quiet.
    ``chapters``: the PFF variants' chapter count (None: epochs only)."""
    if config.quiet:
        return None
    print(start_line(config, world_size, shape, dims, rule, blocks_text, source, batches, chapters), flush=True)
    return Progress(config.epochs, shape.num_train, eval_share, evals, chapters,
                    evaluated_on=evaluated_on(config)).install()


def evaluated_on(config) -> str:
    """The rows a run's accuracies are measured on: "validation" (the --validation rows held out of the training
    set) or "test"."""
    return "validation" if config.validation else "test"
