"""Reliability: fault injection, signals and the stop every rank raises
(faults), the ranks' agreement at boundaries (agreement), checkpoints
(checkpoint)."""
