"""The named workloads of ``--preset``: a face kept for jobs/ and users; they live in pffbench/launch/presets.py."""
from .launch.presets import PRESETS, Preset, listing  # noqa: F401
