"""A calibrated discrete-event performance model of pffbench's schedules.

- ``events``: the discrete-event core (one program per rank, cores shared fairly);
- ``links``: the alpha-beta link model, interconnect table, collectives, the cluster;
- ``profile``/``calibrate``: per-layer step costs, from microbenchmarks scaled to a 1-rank run;
- ``pipeline``, ``pff``, ``backprop``: each schedule family's per-rank programs;
- ``predict``: training time and where it goes; ``validate``: measured vs predicted;
- ``study``, ``headline``, ``figures``: the planning figure and the paper's setup.

Command line: ``python -m pffbench.model``; derivations: docs/model.md.
"""
