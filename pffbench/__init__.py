"""pffbench: how much does Forward-Forward training speed up when its layers
train in parallel on MPI ranks?"""

__version__ = "0.1.0"
