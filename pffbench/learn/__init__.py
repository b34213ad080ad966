"""Learning, apart from the schedules that run it: the local learning rules
(rules/: what one layer learns from, what it hands the next layer, how the
net classifies).  Pure torch: no MPI, no I/O."""
