"""What a PFF layer is, one ``Kind`` per family of variants: how a layer is
built from its published state, what its inputs are, its step, its forward
pass to the next layer's inputs, and how the model is evaluated.  The
schedules (all_layers.py, single_layer.py, ...) and ``Chapters`` only ask a
kind; they never look inside a layer.  Pure torch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import ff
from ...core.config import Config
from ...ff import heads
from ...learn import rules
from ...learn.nets.conv import ConvNet
from ...learn.rules import local_softmax, scff


def load_flat(parameters, flat) -> None:
    flat = torch.as_tensor(flat)
    with torch.no_grad():
        offset = 0
        for p in parameters:
            p.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


def flat_state(parameters) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in parameters])


class Kind:
    """What every kind shares; subclasses say what a layer is.

    ``uses_negatives``: the inputs carry (positive; negative) rows, and
    adaptive negatives need the model's label scores; ``has_head``: a
    softmax head trained after each chapter's layers; ``health_threshold``:
    the goodness threshold the layers train to, for the collapse check
    (schedules/ending.py; None: no goodness, dead units only), and
    ``health_inputs``: the test rows as the first layer sees them there
    (None: with their label embedded; the rule's ``health``, learn/rules);
    ``checks_health``: whether the collapse check reads its layers (it reads
    Linear layers: not a conv net's blocks)."""
    uses_negatives = False
    has_head = False
    health_threshold = None
    health_inputs = None
    checks_health = True

    def __init__(self, config: Config, dims: list[int], num_classes: int, device: torch.device):
        self.config, self.dims, self.num_classes, self.device = config, dims, num_classes, device

    def build(self, index: int, state=None):
        """Layer ``index``, from its initial weights, or from ``state`` (a flat published state)."""
        raise NotImplementedError

    @staticmethod
    def parameters(layer) -> list:
        """What a published state of ``layer`` holds, in order."""
        return list(layer.parameters())

    @staticmethod
    def module(layer) -> torch.nn.Module:
        """The module ``layer`` trains, without any head: what the results file keeps and --inject-nan poisons."""
        return rules.trained_module(layer)

    def attrs(self) -> dict:
        """What the results file records about the net beside its dims (nothing for an MLP)."""
        return {}


class FFKind(Kind):
    """Layer-wise Forward-Forward: (positive; negative) inputs, goodness loss,
    and the Goodness or Softmax classifier."""
    uses_negatives = True

    def __init__(self, config: Config, dims: list[int], num_classes: int, device: torch.device):
        super().__init__(config, dims, num_classes, device)
        self.score_layers = config.score_layers or ff.default_score_layers(len(dims) - 1)
        self.has_head = config.classifier == "softmax"
        self.health_threshold = config.threshold
        self._batch = None  # the minibatch buffer of step()
        self._first_layer = None  # (x, its FirstLayerInputs)

    def build(self, index: int, state=None) -> ff.FFLayer:
        c = self.config
        scale = ff.input_scale(c.norm, self.dims[index])
        layer = ff.FFLayer(ff.make_linear(self.dims[index], self.dims[index + 1], c.seed, index, scale).to(self.device),
                           c.lr, c.threshold, c.sharpness, scale)
        if state is not None:
            load_flat(self.parameters(layer), state)
        return layer

    @staticmethod
    def parameters(layer):
        return [layer.linear.weight, layer.linear.bias]

    def build_head(self, state=None) -> heads.SoftmaxHead:
        width = sum(self.dims[i + 1] for i in self.score_layers)
        head = heads.SoftmaxHead(heads.zero_linear(width, self.num_classes).to(self.device), self.config.softmax_lr)
        if state is not None:
            load_flat(head.parameters(), state)
        return head

    def inputs(self, x: torch.Tensor, y: torch.Tensor, wrong: torch.Tensor, chapter: int) -> ff.FirstLayerPairs:
        # rows normalized once per run (MNIST: 0.54 s), each chapter only brings its labels
        if self._first_layer is None or self._first_layer[0] is not x:
            self._first_layer = (x, ff.FirstLayerInputs(x, self.num_classes))
        return ff.FirstLayerPairs(self._first_layer[1], y.to(x.device), wrong.to(x.device))

    def step(self, layer, xs, labels: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if isinstance(xs, ff.FirstLayerPairs):
            return layer.train_step_pairs(xs.batch(rows), normalize=False)[1]
        # gathered into one reused buffer: indexing twice and concatenating copied every row twice and
        # allocated twice per minibatch (MNIST, 784 wide, batch 64: 300 -> 190 us)
        n, (positive, negative) = len(rows), xs
        if self._batch is None or self._batch.shape != (2 * n, positive.shape[1]):
            self._batch = positive.new_empty((2 * n, positive.shape[1]))
        torch.index_select(positive, 0, rows, out=self._batch[:n])
        torch.index_select(negative, 0, rows, out=self._batch[n:])
        return layer.train_step(self._batch, n, normalize=False)[1]

    @torch.no_grad()
    def forward(self, layer, xs) -> tuple:
        if isinstance(xs, ff.FirstLayerPairs):
            return xs.forward(layer.linear)
        return tuple(ff.normalize(F.relu(layer.linear(x))) for x in xs)

    def scores(self, layers, head, x: torch.Tensor) -> torch.Tensor:
        """Label logits of the current model on ``x``: the head's, or goodness
        times the loss's sharpness (the logit the FF loss itself uses)."""
        linears = [layer.linear for layer in layers]
        if head is not None:
            return head.logits(heads.features(linears, x, self.num_classes, self.score_layers))
        return torch.cat([self.config.sharpness * ff.label_goodness(linears, x[i:i + 1000], self.num_classes,
                                                                     self.score_layers)
                          for i in range(0, x.shape[0], 1000)])

    def evaluate(self, layers, head, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict]:
        accuracy = (self.scores(layers, head, x).argmax(1) == y).float().mean().item()
        return accuracy, {"classifier": self.config.classifier, "score_layers": list(self.score_layers)}


class PerfOptKind(Kind):
    """The local-softmax rule (learn/rules/local_softmax.py; the paper's
    Performance-Optimized PFF): a layer trains with its own softmax head, by
    backprop through those two only, on positive data (neutral label)."""
    uses_negatives = False
    has_head = False  # no separate classifier: every layer has its own

    def build(self, index: int, state=None) -> heads.PerfOptLayer:
        layer = local_softmax.make_layer(index, self.dims, self.num_classes, self.config, self.device)
        if state is not None:
            load_flat(layer.parameters(), state)
        return layer

    def inputs(self, x: torch.Tensor, y: torch.Tensor, wrong, chapter: int) -> tuple:
        return (ff.normalize(ff.embed_labels(x, None, self.num_classes)),)

    @staticmethod
    def step(layer, xs: tuple, labels: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return layer.train_step(xs[0][rows], labels[rows])

    @staticmethod
    @torch.no_grad()
    def forward(layer, xs: tuple) -> tuple:
        return (layer.forward(xs[0]),)

    def evaluate(self, layers, head, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict]:
        last, every = heads.perf_opt_accuracy(layers, x, y, self.num_classes)
        return every, {"classifier": "per-layer softmax heads", "accuracy_last_head": last,
                       "accuracy_all_heads": every}


PARTNER_KEY = 1 << 20  # scff's partners are keyed (seed, chapter, PARTNER_KEY): apart from any order or negatives


class SCFFKind(FFKind):
    """The scff rule (learn/rules/scff.py): FF layers on self-contrastive
    pairs, no label; a linear read-out classifies.  A chapter's partners are
    keyed by (seed, chapter), never by rank, like every PFF random draw."""
    uses_negatives = False  # makes its own: no wrong labels, no adaptive negatives

    def __init__(self, config: Config, dims: list[int], num_classes: int, device: torch.device):
        super().__init__(config, [scff.input_width(dims[0]), *dims[1:]], num_classes, device)
        self.has_head = False
        self.health_threshold, self.health_inputs = scff.health(config)
        self._train = None  # (x, y) of the chapters, for the read-out

    def inputs(self, x: torch.Tensor, y: torch.Tensor, wrong, chapter: int) -> tuple:
        from ...ff.negatives import generator
        self._train = (x, y)
        partners = scff.draw_partners(x.shape[0], generator(self.config.seed, chapter, PARTNER_KEY)).to(x.device)
        every = torch.arange(x.shape[0], device=x.device)
        both = scff.pairs(x, every, partners)
        return both[:x.shape[0]], both[x.shape[0]:]

    def evaluate(self, layers, head, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict]:
        linears = [layer.linear for layer in layers]
        c = self.config
        readout = scff.train_readout(linears, *self._train, self.num_classes, c.softmax_lr, c.batch_size, c.seed)
        return scff.readout_accuracy(linears, readout, x, y), {"classifier": "linear read-out (scff)"}


class ConvKind(Kind):
    """A conv net (--conv, learn/nets/conv.py) under a rule with a conv path (learn/rules: local-softmax's
    DGL blocks with an auxiliary head each, cwcomp's channel-wise competitive blocks), in the rule's own
    terms: layer ``index`` is its ``make_conv_layer`` (keyed by (seed, index), as in the pipeline), its
    step the rule's ``step``, its classifier the rule's ``conv_accuracy``.  The first layer sees the
    training images' rows as they are (the rule's ConvSource: no label, no normalization); the next
    layer's inputs are a layer's outputs [N, C*H*W] (a block's [N, C, H, W] as rows), recomputed once per
    chapter as every PFF kind's are, FORWARD_ROWS rows at a time (one pass over a block's unpooled output
    for every training row would hold N x C x H x W floats at once: CIFAR-10 at 32 channels, 6.5 GB)."""
    uses_negatives = False
    has_head = False  # no separate classifier: local-softmax's layers have their heads, cwcomp's groups score
    checks_health = False
    FORWARD_ROWS = 1000

    def __init__(self, config: Config, net: ConvNet, device: torch.device):
        super().__init__(config, net.dims[:-1], net.num_classes, device)
        self.net = net
        self.rule = rules.module(rules.objective_of(config))

    def build(self, index: int, state=None):
        layer = self.rule.make_conv_layer(index, self.net, self.config, self.device)
        if state is not None:
            load_flat(layer.parameters(), state)
        return layer

    def inputs(self, x: torch.Tensor, y: torch.Tensor, wrong, chapter: int) -> tuple:
        return (x,)

    def step(self, layer, xs: tuple, labels: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        side = labels[rows].to(xs[0].dtype).unsqueeze(1)  # the labels as the pipeline's side column carries them
        return self.rule.step(layer, xs[0][rows], side, len(rows))[1]

    @torch.no_grad()
    def forward(self, layer, xs: tuple) -> tuple:
        x = xs[0]
        out = None
        for start in range(0, x.shape[0], self.FORWARD_ROWS):
            part = layer.forward(x[start:start + self.FORWARD_ROWS]).flatten(1)
            if out is None:
                out = part.new_empty((x.shape[0], part.shape[1]))
            out[start:start + part.shape[0]] = part
        return (out,)

    def evaluate(self, layers, head, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict]:
        modules = [self.module(layer) for layer in layers]
        heads_ = [layer.head for layer in layers] if all(hasattr(layer, "head") for layer in layers) else None
        accuracy = self.rule.conv_accuracy(modules, heads_, self.net, x, y, self.config, self.device)
        what = "every block's auxiliary head (log-probabilities summed)" if heads_ else "the last block's goodness"
        return accuracy, {"classifier": what}

    def attrs(self) -> dict:
        return {"layer_shapes": [list(shape) for shape in self.net.shapes()]}


KINDS = {"ff": FFKind, "local-softmax": PerfOptKind, "scff": SCFFKind}


def for_config(config: Config, shape, device: torch.device) -> Kind:
    """The kind of the run's rule (--objective, else the variant's own) on data of Shape ``shape``: a conv
    net's (``ConvKind``) under --conv, else the rule's MLP kind."""
    if config.conv:
        return ConvKind(config, ConvNet.of(config, shape), device)
    dims = [shape.num_features, *config.layers]
    return KINDS[rules.objective_of(config)](config, dims, shape.num_classes, device)
