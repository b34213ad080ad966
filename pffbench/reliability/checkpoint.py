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
import sys
import time

import numpy as np
import torch

from ..comm import collectives
from ..core.config import INCIDENTAL, Config, UsageError, computing_settings
from ..instrument.progress import plural
from ..store.atomic import atomic_write, describe
from ..store.format import one_line

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
        self.error = ""  # a checkpoint marker rank 0 could not write (commit)

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

    def save(self, tag: int, state: dict) -> str | None:
        """Store this rank's ``state`` as checkpoint ``tag`` (epochs completed).
        Returns None, or on every rank the one line saying which rank's file
        could not be written and why (``failure``): the schedule then stops the
        run as failed, recorded with its epochs, resumable from the last
        complete checkpoint."""
        error = self.write(tag, state)
        done = collectives.sum_everywhere(self.comm, np.array([0.0 if error else 1.0]), "a checkpoint")
        if done[0] != self.size:
            return self.failure(tag, error)
        self.commit(tag)
        return None

    def write(self, tag: int, state: dict) -> str:
        """Write this rank's file of checkpoint ``tag``; returns "" or, in one
        line, what went wrong (also a marker rank 0 could not write before:
        ``commit``).  Not collective: the ranks then agree that every file is
        there, and rank 0 commits."""
        if self.error:
            return self.error
        path = self._file(tag, self.rank)
        try:
            os.makedirs(self._folder(tag), exist_ok=True)
            atomic_write(path, lambda f: torch.save(state, f))
            return ""
        except Exception as exc:  # noqa: BLE001 (any failure, whatever the library calls it: one line)
            return describe(path, exc)

    def failure(self, tag: int, error: str) -> str:
        """Collective, once the ranks know that some rank's file of ``tag``
        could not be written (``error``: this rank's line, or ""): the line of
        the first such rank, and where a --resume would continue."""
        errors = self.comm.allgather(error)
        rank = next(r for r, line in enumerate(errors) if line)
        tags = self.complete_tags() if self.rank == 0 else []
        after = f"--resume continues after epoch {tags[-1]}" if tags else "no checkpoint is complete: --resume starts over"
        return f"rank {rank}: {errors[rank]} ({after})"

    def commit(self, tag: int) -> None:
        """Once every rank's file of ``tag`` is durable: rank 0 marks it
        complete and prunes old ones.  A marker it cannot write leaves the
        checkpoint incomplete (resume ignores it) and becomes rank 0's error at
        the next checkpoint (``write``), where the ranks agree to stop."""
        if self.rank == 0:
            marker = {"tag": tag, "ranks": self.size, "time": time.time(), **self.fingerprint}
            path = os.path.join(self._folder(tag), MARKER)
            try:
                atomic_write(path, lambda f: f.write(json.dumps(marker).encode()))
            except Exception as exc:  # noqa: BLE001
                self.error = describe(path, exc)
                return
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
        """(tag, this rank's state) of the newest complete checkpoint whose
        files every rank can load, None if there is none (collective).

        Every rank loads its own file of the newest complete checkpoint before
        training; if any rank cannot (a copy cut short, a damaged disk), all
        of them go on to the one before (pffbench keeps two for this), and
        rank 0 says so in one warning line.  A checkpoint of another
        configuration, or complete checkpoints none of which is intact, is a
        UsageError on every rank."""
        candidates = self.comm.bcast(self._candidates() if self.rank == 0 else None, root=0)
        if isinstance(candidates, str):
            raise UsageError(candidates)
        damaged = []  # rank 0: what is wrong with each checkpoint passed over
        for tag, problem in candidates:
            state, error = None, problem  # rank 0's finding (marker, missing files) holds for every rank
            if not problem:
                path = self._file(tag, self.rank)
                try:
                    state = torch.load(path, map_location="cpu", weights_only=False)
                except Exception as exc:  # noqa: BLE001 (torch's RuntimeError, pickle's, EOFError, OSError ...)
                    size = os.path.getsize(path) if os.path.exists(path) else 0
                    error = (f"rank {self.rank} cannot load {os.path.basename(path)}, {size} bytes "
                             f"({type(exc).__name__}: {one_line(exc)})")
            bad = collectives.sum_everywhere(self.comm, np.array([1.0 if error else 0.0]),
                                             "the check of the checkpoints")
            if not bad[0]:
                if damaged and self.rank == 0:
                    print(f"pffbench: warning: {'; '.join(damaged)}: resuming from {self._folder(tag)} instead",
                          file=sys.stderr, flush=True)
                return tag, state
            errors = self.comm.gather(error, root=0)
            if self.rank == 0:
                damaged.append(f"checkpoint {self._folder(tag)} is damaged: {next(e for e in errors if e)}")
        if not candidates:
            return None
        raise UsageError(f"{'; '.join(damaged)}; no intact checkpoint is left in {self.directory}: "
                         f"run without --resume, or with another --checkpoint-dir")

    def _candidates(self) -> list[tuple[int, str]] | str:
        """Rank 0: the complete checkpoints, newest first, each with what is
        wrong with it ("" if nothing rank 0 can see); or the line refusing them
        all (the newest readable one was written by other settings, another
        pffbench, another number of ranks)."""
        out = []
        for tag in reversed(self.complete_tags()):
            marker_path = os.path.join(self._folder(tag), MARKER)
            try:
                with open(marker_path) as f:
                    marker = json.load(f)
                if not isinstance(marker, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as exc:
                out.append((tag, f"cannot read its marker {MARKER} ({one_line(exc)})"))
                continue
            refusal = self._refusal(tag, marker)
            if refusal:
                return refusal
            missing = [r for r in range(self.size) if not os.path.isfile(self._file(tag, r))]
            out.append((tag, f"it is marked complete but lacks rank files {missing}" if missing else ""))
        return out

    def _refusal(self, tag: int, marker: dict) -> str | None:
        """The line refusing checkpoint ``tag`` of ``marker`` for this run, or None."""
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
        return None


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
    # a setting the marker does not name is newer than it and had its default then (as in _refusal: --conv)
    defaults, theirs = fingerprint(Config(), world_size)["config"], marker.get("config") or {}
    if not isinstance(theirs, dict):
        return None
    computing = (set(theirs) | set(ours["config"])) - set(INCIDENTAL)
    same = marker.get("format") == ours["format"] and marker.get("world_size") == world_size and \
        all(theirs.get(k, defaults.get(k)) == ours["config"].get(k, defaults.get(k)) for k in computing)
    return marker if same else None


def forget_finished(config: Config) -> None:
    """Rank 0, when a run starts training in --checkpoint-dir: a FINISHED left by an earlier run no longer holds."""
    try:
        os.remove(os.path.join(config.checkpoint_dir, FINISHED))
    except OSError:
        pass
