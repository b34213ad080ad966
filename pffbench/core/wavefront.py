"""All-Layers' routing of chapters over ranks (the wavefront), in one place for the schedule
(schedules/pff/all_layers.py: All-Layers and Performance-Optimized), its model (perfmodel/pff.py) and the
speedup bound (perfmodel/pff.py, wavefront_bound; python -m pffbench.paper_bench).

Chapter c is trained by rank c mod N; it gets each layer as published in chapter c - 1 (by rank (c - 1) mod N)
and publishes it to the rank of chapter c + 1, or, after the last chapter, to rank 0, which evaluates.
Aktemur et al. 2024, section 4 (All-Layers PFF)."""
from __future__ import annotations


def trainer(chapter: int, ranks: int) -> int:
    """The rank that trains ``chapter``."""
    return chapter % ranks


def chapters_of(rank: int, ranks: int, chapters: int) -> range:
    """The chapters ``rank`` trains, in order."""
    return range(rank, chapters, ranks)


def source(chapter: int, ranks: int) -> int | None:
    """The rank whose layers ``chapter`` starts from; None for chapter 0 (fresh layers)."""
    return None if chapter == 0 else trainer(chapter - 1, ranks)


def destination(chapter: int, ranks: int, chapters: int) -> int:
    """Where ``chapter``'s layers go: the next chapter's rank, or rank 0 after the last chapter."""
    return trainer(chapter + 1, ranks) if chapter + 1 < chapters else 0
