"""Checkpoints at epoch (or chapter) boundaries, and resuming from them.

Layout of ``--checkpoint-dir DIR``:

    DIR/epoch-000003/rank-0000.pt   rank 0's state after 3 epochs
    DIR/epoch-000003/rank-0001.pt   ...
    DIR/epoch-000003/COMPLETE       JSON, written last: every rank finished this checkpoint

Every file is written atomically (temp file, fsync, rename, fsync of the
folder), and rank 0 writes ``COMPLETE`` only after every rank has reported its
file durable, so a job killed at any instant leaves either a complete
checkpoint or one that resume ignores.  ``--resume`` loads the newest complete
checkpoint, and refuses it if it was written with other settings or another
number of ranks; the two newest complete checkpoints are kept, older ones are
removed.

What a rank's state holds is the schedule's business (a dict torch.save can
write); this module only stores it, agrees on it across ranks, and offers
helpers for the pieces every schedule has (RNG states, optimizers).
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import time

import numpy as np
import torch

from ..comm import collectives
from ..core.config import INCIDENTAL, Config, UsageError, computing_settings
from ..instrument.progress import plural
from ..store.atomic import atomic_write

MARKER = "COMPLETE"
KEEP = 2
_PATTERN = re.compile(r"^epoch-(\d{6})$")


# what a rank's state holds; raised when that changes.  2: Single-Layer carries the scores of the last N chapters
FORMAT = 2


def fingerprint(config: Config, world_size: int) -> dict:
    """What must match for a checkpoint to be resumed: the state's format, the
    settings that change what is computed (core/config.py; the others may
    differ) and the world size."""
    values = computing_settings(dataclasses.asdict(config))
    return json.loads(json.dumps({"format": FORMAT, "config": values, "world_size": world_size}))


def rng_state(generator: torch.Generator | None = None) -> dict:
    """The process's random states (torch, numpy, python) and ``generator``'s."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if generator is not None:
        generator.set_state(state["generator"])


class Checkpoints:
    """One rank's view of ``--checkpoint-dir``.  ``save`` and ``load_latest``
    are collective: every rank calls them at the same boundary."""

    def __init__(self, directory: str, comm, config: Config):
        self.directory, self.comm, self.config = directory, comm, config
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.fingerprint = fingerprint(config, self.size)

    @classmethod
    def from_config(cls, config: Config, comm) -> "Checkpoints | None":
        """The run's checkpoints (None without --checkpoint-dir), once every
        rank has shown that it sees the folder rank 0 sees (collective)."""
        if not config.checkpoint_dir:
            return None
        store = cls(config.checkpoint_dir, comm, config)
        store.check_shared()
        return store

    def check_shared(self) -> None:
        """Raise UsageError on every rank unless every rank sees the file rank
        0 puts in the folder: a folder local to each node (e.g. $TMPDIR on a
        cluster) would give checkpoints marked complete that no resume can
        read, every rank's file being on its own node."""
        probe = os.path.join(self.directory, f".probe-{os.getpid()}-{time.time_ns()}") if self.rank == 0 else None
        problem = ""
        if self.rank == 0:
            try:
                os.makedirs(self.directory, exist_ok=True)
                with open(probe, "w"):
                    pass
            except OSError as exc:
                problem = f"--checkpoint-dir {self.directory}: cannot write in it: {exc.strerror or exc}"
        probe, problem = self.comm.bcast((probe, problem), root=0)
        unseen = collectives.sum_everywhere(self.comm, np.array([0.0 if problem or os.path.exists(probe) else 1.0]),
                                          "the check of the checkpoint folder")
        if self.rank == 0 and not problem:
            os.remove(probe)
        if problem:
            raise UsageError(problem)
        if unseen[0]:
            raise UsageError(f"--checkpoint-dir {self.directory}: {plural(int(unseen[0]), 'rank')} {'does' if unseen[0] == 1 else 'do'} not see what rank 0 "
                             f"writes there: use a folder every node shares (not a node-local one such as $TMPDIR)")

    def _folder(self, tag: int) -> str:
        return os.path.join(self.directory, f"epoch-{tag:06d}")

    def _file(self, tag: int, rank: int) -> str:
        return os.path.join(self._folder(tag), f"rank-{rank:04d}.pt")

    def save(self, tag: int, state: dict) -> None:
        """Store this rank's ``state`` as checkpoint ``tag`` (epochs completed)."""
        error = self.write(tag, state)
        done = collectives.sum_everywhere(self.comm, np.array([0.0 if error else 1.0]), "a checkpoint")
        self.check_written(tag, done[0] == self.size, error)
        self.commit(tag)

    def write(self, tag: int, state: dict) -> str:
        """Write this rank's file of checkpoint ``tag``; returns "" or what went wrong.  Not collective:
        the ranks then agree that every file is there (``check_written``), and rank 0 commits."""
        try:
            os.makedirs(self._folder(tag), exist_ok=True)
            atomic_write(self._file(tag, self.rank), lambda f: torch.save(state, f))
            return ""
        except OSError as exc:
            return f"cannot write checkpoint {self._file(tag, self.rank)}: {exc.strerror or exc}"

    def check_written(self, tag: int, everyone: bool, error: str) -> None:
        if not everyone:
            if error:
                raise OSError(error)  # this rank failed: its traceback ends the job
            raise OSError(f"checkpoint {self._folder(tag)}: another rank could not write its file")

    def commit(self, tag: int) -> None:
        """Once every rank's file of ``tag`` is durable: rank 0 marks it complete and prunes old ones."""
        if self.rank == 0:
            marker = {"tag": tag, "ranks": self.size, "time": time.time(), **self.fingerprint}
            atomic_write(os.path.join(self._folder(tag), MARKER), lambda f: f.write(json.dumps(marker).encode()))
            self._prune(tag)

    def complete_tags(self) -> list[int]:
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        tags = [int(m.group(1)) for m in map(_PATTERN.match, names) if m]
        return sorted(t for t in tags if os.path.isfile(os.path.join(self._folder(t), MARKER)))

    def _prune(self, newest: int) -> None:
        keep = set(self.complete_tags()[-KEEP:])
        for name in os.listdir(self.directory):
            match = _PATTERN.match(name)
            if match and int(match.group(1)) not in keep and int(match.group(1)) <= newest:
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    def load_latest(self) -> tuple[int, dict] | None:
        """(tag, this rank's state) of the newest complete checkpoint, None if
        there is none.  A checkpoint of another configuration is a UsageError
        on every rank."""
        verdict = None
        if self.rank == 0:
            verdict = self._pick()
        verdict = self.comm.bcast(verdict, root=0)
        if isinstance(verdict, str):
            raise UsageError(verdict)
        if verdict is None:
            return None
        path = self._file(verdict, self.rank)
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # a complete checkpoint must load: say which file and how to go on
            raise OSError(f"cannot load checkpoint {path}: {exc}; delete {self._folder(verdict)} "
                          f"to resume from the one before") from exc
        return verdict, state

    def _pick(self):
        tags = self.complete_tags()
        if not tags:
            return None
        tag = tags[-1]
        marker_path = os.path.join(self._folder(tag), MARKER)
        try:
            with open(marker_path) as f:
                marker = json.load(f)
        except (OSError, ValueError) as exc:
            return f"cannot read checkpoint marker {marker_path}: {exc}"
        if marker.get("format", 1) != FORMAT:
            return (f"checkpoint {self._folder(tag)} was written by another version of pffbench (checkpoint "
                    f"format {marker.get('format', 1)}, this one reads {FORMAT}): resume with that version, or "
                    f"use another --checkpoint-dir")
        if marker.get("world_size") != self.size:
            return (f"checkpoint {self._folder(tag)} was written by {plural(marker.get('world_size'), 'rank')}, "
                    f"this job has {self.size}: resume with the same number of ranks")
        ours, theirs = self.fingerprint["config"], marker.get("config") or {}
        # settings that do not change what is computed may differ (checkpoints written before --transport
        # was known to be one of them name it: they resume all the same); a setting a checkpoint does not
        # name is newer than it, and had its default then (e.g. --microbatches, --target-accuracy)
        defaults = fingerprint(Config(), self.size)["config"]
        differ = sorted(k for k in set(theirs) | set(ours)
                        if k not in INCIDENTAL and theirs.get(k, defaults.get(k)) != ours.get(k))
        if differ:
            flags = ", ".join("--" + k.replace("_", "-") for k in differ)
            return (f"checkpoint {self._folder(tag)} was written with other settings ({flags}): "
                    f"resume with the same flags, or use another --checkpoint-dir")
        missing = [r for r in range(self.size) if not os.path.isfile(self._file(tag, r))]
        if missing:
            return f"checkpoint {self._folder(tag)} is marked complete but lacks rank files {missing}"
        return tag


# --- a finished run ---------------------------------------------------------------------------------------------
# The last epoch gets no checkpoint (the run records its result instead); rank 0 writes FINISHED once the run is
# recorded, so a --resume of it (a requeued job that had in fact finished) does nothing instead of retraining
# the last epoch and appending a second copy of the run.  A run started without --resume removes it.
FINISHED = "FINISHED"


def mark_finished(config: Config, world_size: int, name: str | None, out: str | None) -> None:
    """Rank 0, after the run is recorded as run ``name`` in ``out``."""
    marker = {"run": name, "out": out, "time": time.time(), **fingerprint(config, world_size)}
    try:
        os.makedirs(config.checkpoint_dir, exist_ok=True)
        atomic_write(os.path.join(config.checkpoint_dir, FINISHED), lambda f: f.write(json.dumps(marker).encode()))
    except OSError:  # the run is recorded; only a later --resume would retrain its last epoch
        pass


def finished(config: Config, world_size: int) -> dict | None:
    """Rank 0: the FINISHED marker of this run's settings in --checkpoint-dir, or None."""
    try:
        with open(os.path.join(config.checkpoint_dir, FINISHED)) as f:
            marker = json.load(f)
    except (OSError, ValueError, TypeError):
        return None
    ours = fingerprint(config, world_size)
    same = marker.get("format") == ours["format"] and marker.get("world_size") == world_size and \
        {k: v for k, v in (marker.get("config") or {}).items() if k not in INCIDENTAL} == \
        {k: v for k, v in ours["config"].items() if k not in INCIDENTAL}
    return marker if same else None


def forget_finished(config: Config) -> None:
    """Rank 0, when a run starts training in --checkpoint-dir: a FINISHED left by an earlier run no longer holds."""
    try:
        os.remove(os.path.join(config.checkpoint_dir, FINISHED))
    except OSError:
        pass
