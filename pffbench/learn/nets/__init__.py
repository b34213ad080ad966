"""Networks the learning rules and the backprop baselines train, beside the
MLP that ff/ and schedules/backprop/mlp.py build: conv.py, the
convolutional net of ``--conv``.  Pure torch: no MPI, no I/O."""
