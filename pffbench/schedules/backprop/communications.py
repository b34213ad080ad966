"""MPI for the backprop baselines: dp-backprop's gradient sum.  (The training
data reaches every rank through comm.collectives.share_training_data, as in
the PFF variants.)"""
from __future__ import annotations

import torch
from mpi4py import MPI

from ...comm.guard import wait
from ...instrument.timer import EpochTimer


class GradientAllreduce:
    """Data-parallel gradient sum: one flat, preallocated float32 buffer that
    the parameters' .grad tensors view, summed over ranks in place with one
    buffer-based Allreduce per step (never pickled), guarded like every wait
    on a peer.  On a GPU the buffer is staged through a preallocated host
    copy, so any MPI works."""

    def __init__(self, comm: MPI.Comm, flat: torch.Tensor, timer: EpochTimer):
        self.comm, self.flat, self.timer = comm, flat, timer
        self._host = flat if flat.device.type == "cpu" else torch.empty(flat.shape, dtype=flat.dtype,
                                                                         pin_memory=torch.cuda.is_available())

    def allreduce(self) -> None:
        if self.comm.Get_size() == 1:
            return
        with self.timer("sync"):  # the wait for every rank's gradients, and a GPU's host staging
            if self._host is not self.flat:
                self._host.copy_(self.flat)
            wait(self.comm.Iallreduce(MPI.IN_PLACE, [self._host.numpy(), MPI.FLOAT], op=MPI.SUM),
                 "the other ranks", "the gradient allreduce")
            if self._host is not self.flat:
                self.flat.copy_(self._host)
