"""Measurement: the one timer every schedule keeps its time accounts and trace with."""
