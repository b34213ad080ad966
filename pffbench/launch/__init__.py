"""The run command's plumbing: its command line (cli.py), the Config's validation (validate.py), the named
workloads (presets.py) and what rank 0 says around a run (console.py)."""
