"""From results to findings: cases, series and speedups (analysis)."""
