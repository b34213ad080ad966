"""Between the PFF chapters: resuming from a checkpoint, and the ranks'
agreement on signals, non-finite layers and checkpoints (README,
Reliability)."""
from __future__ import annotations

import numpy as np

from ...comm import collectives
from .. import ending as outcome
from ...instrument import progress
from ...reliability import checkpoint, faults
from ...reliability.agreement import LaggedAgreement, agreed_signal
from .chapters import Chapters


class Boundaries:
    """Between chapters: resuming from a checkpoint, and the ranks' agreement
    on signals, non-finite layers and checkpoints (see README, Reliability).

    Chapters come in rounds of ``per_round``: one chapter per rank for the
    round-robin variants, one chapter for those in which every rank trains
    every chapter.  After its part of round k a rank writes its checkpoint
    file, posts its flags without waiting (``LaggedAgreement``, reliability/agreement.py) and
    reads the verdict on round k - ``lag``, which every rank posted long ago;
    so all ranks stop after the same round, every chapter before the cut
    complete everywhere, and none waits for the slowest.  ``lag`` is how many
    rounds the first rank may run ahead of the last: one in the wavefront, N
    chapters in Single-Layer.  The last round ends with the run: it gets no
    checkpoint, and the verdicts still due then (on the last ``lag`` + 1
    rounds) are read only for non-finite layers, which fail the run; a signal
    in those rounds lets it finish, as one in the pipeline's last epoch does.

    ``carry`` is what a rank published in its last chapter of a round
    ({slot: state}), which the next round starts from; a resumed run
    publishes it again.
    """
    FLAGS = ("signal", "written", "what", "layer", "chapter", "epoch")

    def __init__(self, pff: Chapters, exchange, blocks: list[range], per_round: int = 1, lag: int = 1,
                 loss_divisor: int = 1):
        self.pff, self.exchange, self.blocks, self.loss_divisor = pff, exchange, blocks, loss_divisor
        self.per_round, self.num_rounds = per_round, -(-pff.num_chapters // per_round)
        comm = pff.world.comm
        self.agreement = LaggedAgreement(comm, lag)
        progress.stops_after(self.agreement.lag)
        self.checkpoints = checkpoint.Checkpoints.from_config(pff.config, comm)
        self.start, self.carry, self.error, self.committed = 0, {}, "", None
        self.first_posted = None  # the first round whose flags carried a signal or a failure
        # how far (in rank 0's chapters) the last rank ends after rank 0, for the ETA: in Single-Layer the last
        # layer's rank is N - 1 layer-chapters behind; round-robin, rank N - 1 starts N - 1 layers after rank 0
        self.drain = lag - 1 if per_round == 1 else (per_round - 1) / pff.num_layers
        resumed = self.checkpoints.load_latest() if self.checkpoints and pff.config.resume else None
        if resumed:
            pff.resumed_from, state = resumed
            self.start, self.carry = state["chapter"], state["carry"]
            pff.negatives.scores, pff.loss[:] = state["scores"], state["loss"]
            pff.timer.restore(state["clock"])
            if pff.world.is_first:
                progress.resumed(pff.resumed_from)
                print(f"resuming from {pff.config.checkpoint_dir} after epoch {pff.resumed_from}/{pff.config.epochs}"
                      f" (chapter {self.start}/{pff.num_chapters})", flush=True)

    def _epochs_done(self, round_: int) -> int:
        return min((round_ + 1) * self.per_round, self.pff.num_chapters) * self.pff.per_chapter

    def after(self, chapter: int, carry: dict) -> None:
        """This rank's part of ``chapter`` is done; may raise RunStopped (on every rank at once)."""
        round_ = chapter // self.per_round
        if self.pff.world.is_first:  # rank 0 trains one chapter a round
            progress.chapter_done(chapter, round_ + 1, self.num_rounds, self.drain)
        if round_ < self.num_rounds - 1:
            epoch = self.pff.last_epoch(chapter)
            with self.pff.timer.off(epoch):
                written = self._checkpoint(round_, carry)
            with self.pff.timer("sync", epoch):
                self._boundary(round_, written)

    def _checkpoint(self, round_: int, carry: dict) -> int:
        """This rank's file of round ``round_``'s checkpoint: 1 written, -1 failed, 0 none."""
        if not self.checkpoints or self.pff.failure:  # a diverged state is not worth resuming
            return 0
        pff = self.pff
        self.error = self.error or self.checkpoints.write(self._epochs_done(round_), {
            "chapter": (round_ + 1) * self.per_round, "carry": carry, "scores": pff.negatives.scores,
            "loss": pff.loss.copy(), "clock": pff.timer.state()})
        return -1 if self.error else 1

    def _boundary(self, round_: int, written: int) -> None:
        self.agreement.post(round_, [faults.INTERRUPTS.signum, written, *(self.pff.failure or (0, 0, 0, 0))])
        for past, table in self.agreement.due(round_):
            unwritten = self._settle(past, table)
            failure, signum = self._verdict(table)
            if (failure or signum or unwritten) and self.first_posted is None:
                self.first_posted = past
            if failure or signum or unwritten:
                for later, table in self.agreement.due():  # the rounds since: every rank has posted them
                    self._settle(later, table)
                # a checkpoint a rank could not write (a full disk): the run stops as failed, every rank together
                lost = None if failure or not unwritten else \
                    self.checkpoints.failure(self._epochs_done(past), self.error)
                self._stop(self._epochs_done(round_), table, seen=self._epochs_done(self.first_posted),
                           failure=lost)

    def close(self) -> None:
        """After this rank's last chapter: a non-finite layer anywhere fails the run (a checkpoint that
        could not be written in the last rounds does not: the run is complete)."""
        with self.pff.timer("sync", self.pff.config.epochs - 1):
            self.agreement.post(self.num_rounds - 1, [0, 0, *(self.pff.failure or (0, 0, 0, 0))])
            for past, table in self.agreement.due():
                self._settle(past, table)
                if self._verdict(table)[0] and self.first_posted is None:
                    self.first_posted = past
        if self._verdict(table)[0]:
            self._stop(self.pff.config.epochs, table, seen=self._epochs_done(self.first_posted))

    def _settle(self, round_: int, table) -> bool:
        """Round ``round_``'s checkpoint: complete once every rank wrote its
        file; True if some rank could not write its file."""
        written = table[:, self.FLAGS.index("written")]
        if self.checkpoints and (written > 0).all():
            self.checkpoints.commit(self._epochs_done(round_))
            self.committed = self._epochs_done(round_)
        return bool((written < 0).any())

    def _verdict(self, table) -> tuple[str | None, int]:
        """(the first non-finite layer in training order, or None; the signal to stop for, or 0)."""
        what, layer, chapter, epoch = (self.FLAGS.index(f) for f in ("what", "layer", "chapter", "epoch"))
        failed = [r for r in range(len(table)) if table[r, what]]
        failure = None
        if failed:
            rank = min(failed, key=lambda r: (table[r, chapter], table[r, layer]))
            row = table[rank].astype(int)
            where = "the softmax head" if row[layer] == self.pff.head_slot else f"layer {row[layer]}"
            failure = faults.diverged(row[what], where, rank, row[epoch],
                                      f" (chapter {row[chapter] + 1} of {self.pff.num_chapters})")
        return failure, agreed_signal(table[:, self.FLAGS.index("signal")])

    def _stop(self, epochs_done: int, table, seen: int | None = None, failure: str | None = None) -> None:
        """Every rank agreed to stop after ``epochs_done`` epochs (a rank first
        posted the problem after ``seen``): settle the messages in flight,
        gather the accounts, raise RunStopped (rank 0's carries the partial
        run for the results file); ``failure``: the reason to fail it if no layer diverged."""
        diverged, signum = self._verdict(table)
        failure = diverged or failure
        pff, comm = self.pff, self.pff.world.comm
        self.exchange.drain()
        loss = collectives.sum_to_root(comm, pff.loss)
        if loss is not None:
            loss /= self.loss_divisor
        raise outcome.stop(pff.config, comm, pff.timer, pff.shape.num_train, loss, np.full(pff.config.epochs, np.nan),
                           epochs_done, failure, signum, self.committed == epochs_done, pff.dims, self.blocks,
                           attrs={"splits": pff.num_chapters, "epochs_per_chapter": pff.per_chapter,
                                  "stop_posted_after_epoch": epochs_done if seen is None else seen})
