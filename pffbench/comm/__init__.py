"""MPI shared by every schedule: the guarded waits (guard) and the collectives (collectives)."""
