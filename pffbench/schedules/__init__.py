"""The schedules, one folder per family: pipeline/ (activations travel),
pff/ (the paper's variants: weights travel), backprop/ (the baselines)."""
