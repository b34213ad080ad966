"""Forward-Forward math in pure torch: no MPI, no I/O.

The package's names, for ``from pffbench import ff``: the layer and its loss
(layer.py), the first layer's inputs (inputs.py); the softmax heads
(heads.py) and negative labels (negatives.py) are imported from their
modules.
"""
from .inputs import EpochInputs, FirstLayerInputs, FirstLayerPairs, PairBatch
from .layer import (NORMS, FFLayer, accuracy, cooldown_lr, default_score_layers, embed_labels, ff_loss, goodness,
                    input_scale, label_goodness, make_linear, normalize, predict)
from .negatives import random_wrong_labels

__all__ = ["NORMS", "EpochInputs", "FFLayer", "FirstLayerInputs", "FirstLayerPairs", "PairBatch", "accuracy", "cooldown_lr",
           "default_score_layers", "embed_labels", "ff_loss", "goodness", "input_scale", "label_goodness", "make_linear",
           "normalize", "predict", "random_wrong_labels"]
