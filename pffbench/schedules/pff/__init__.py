"""The paper's PFF variants: only weights travel.  chapters.py (what they share),
kinds.py (what a layer is), boundaries.py (between chapters), one module per
schedule, communications.py (their MPI)."""
