"""The run command's plumbing: its command line (cli.py), the Config's validation (validate.py), the named
workloads (presets.py), what rank 0 says around a run (console.py), and the wrapper every command's main runs under
(command.py: one line and exit 2 on bad input, a quiet end on a closed pipe)."""
