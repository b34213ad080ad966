"""Microbenchmarks that measure this machine for the model and the docs: the pipeline's links (link_timing.py,
behind python -m pffbench.links), the network's alpha and beta (linkprobe.py), the FF and backprop kernels
(profile.py), torch.distributed.pipelining's overhead (library_overhead.py)."""
