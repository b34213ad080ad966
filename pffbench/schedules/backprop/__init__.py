"""The backprop baselines on the FF net's MLP: data_parallel.py (backprop and
dp-backprop), mlp.py (the model), communications.py (the gradient allreduce).
Other backprop schedules (pipeline-parallel, DDP) belong here too, each a
module with train() and an entry in core/variants.py."""
