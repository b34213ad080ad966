"""The cwcomp rule (learn/rules/cwcomp.py, --objective cwcomp): its goodness and CwC loss against a hand
computation, a step that changes its block only, what it is refused with, and a 1-rank pipeline run on tiny
images that learns.  The p-versus-1 test is tests/mpi/test_cwcomp_mpi.py."""
import dataclasses
import math

import pytest
import torch

from pffbench.core.config import Config, UsageError
from pffbench.core.types import Shape
from pffbench.launch.cli import parse_config
from pffbench.launch.console import planned_blocks
from pffbench.launch.validate import validate, validate_shape
from pffbench.learn import rules
from pffbench.learn.nets.conv import ConvNet
from pffbench.learn.rules import cwcomp, local_softmax

MNIST_SHAPE = Shape(60000, 784, 10, (1, 28, 28))
PIPELINE = ["--variant", "pipeline", "--objective", "cwcomp"]


def _config(**changes) -> Config:
    return dataclasses.replace(Config(objective="cwcomp", conv=(10, 20), layers=(), lr=1e-2, seed=3), **changes)


# --- the goodness and the loss -----------------------------------------------------------------------------

def test_goodness_is_the_mean_square_of_each_class_channel_group():
    """2 examples, 6 channels, 3 classes (groups {0,1}, {2,3}, {4,5}), 1 x 2 pixels: by hand."""
    h = torch.arange(24, dtype=torch.float32).reshape(2, 6, 1, 2) / 10
    # example n's channel c holds the values 12n + 2c and 12n + 2c + 1 (over 10): group k holds 12n + 4k .. +3
    expected = torch.tensor([[sum(v * v for v in range(12 * n + 4 * k, 12 * n + 4 * k + 4)) / 4 / 100
                              for k in range(3)] for n in range(2)])
    torch.testing.assert_close(cwcomp.goodness(h, 3), expected)


def test_the_cwc_loss_is_the_cross_entropy_of_the_goodness():
    """L = mean_n [-G[n, y_n] + log sum_k exp G[n, k]], computed by hand from the goodness of a tiny output."""
    torch.manual_seed(0)
    h = torch.rand(3, 4, 2, 2)
    labels = torch.tensor([1, 0, 1])
    g = [[sum(h[n, c, i, j].item() ** 2 for c in (2 * k, 2 * k + 1) for i in range(2) for j in range(2)) / 8
          for k in range(2)] for n in range(3)]
    by_hand = sum(-g[n][labels[n]] + math.log(sum(math.exp(v) for v in g[n])) for n in range(3)) / 3
    net = ConvNet((1, 4, 4), (4,), (), 2)
    layer = cwcomp.CwCompLayer(net.make_layer(0, 0), 2, 1e-3)
    assert layer.loss(h, labels).item() == pytest.approx(by_hand, rel=1e-6)


def test_a_step_trains_its_block_alone_and_passes_on_its_own_forward():
    """The step's output is the block's forward before the update (detached); only the block's parameters
    move; the loss is the CwC loss of that forward."""
    net = ConvNet((1, 8, 8), (10, 20), (), 10)
    config = _config()
    first, second = (cwcomp.make_conv_layer(i, net, config, torch.device("cpu")) for i in range(2))
    before = [p.detach().clone() for p in first.parameters()]
    untouched = [p.detach().clone() for p in second.parameters()]
    torch.manual_seed(1)
    x = torch.rand(16, 64)  # flat rows, as a message carries them
    labels = torch.randint(0, 10, (16,))
    with torch.no_grad():
        forward = first.forward(x)
        loss = first.loss(forward, labels)
    h, step_loss = cwcomp.step(first, x, labels.float().unsqueeze(1), 16)
    assert h.shape == (16, 10, 4, 4) and not h.requires_grad and torch.equal(h, forward)
    assert torch.equal(step_loss, loss)
    assert all(not torch.equal(a, b) for a, b in zip(before, first.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(untouched, second.parameters()))
    assert not hasattr(first, "head")  # no auxiliary head: the goodness are the logits
    # the initial block is every rule's block (seed, index): every partition starts alike
    assert torch.equal(second.block.conv.weight, net.make_layer(1, config.seed).conv.weight)


def test_the_rule_is_registered_with_its_names_and_costs():
    assert "cwcomp" in rules.OBJECTIVES and rules.module("cwcomp") is cwcomp
    assert parse_config([*PIPELINE, "--conv", "10,20"]).objective == "cwcomp"
    assert cwcomp.message_rows(5) == 5 and cwcomp.input_width(784) == 784 and not cwcomp.NEEDS_NEGATIVES
    assert cwcomp.ConvSource is local_softmax.ConvSource and cwcomp.health(Config()) == (None, None)
    net = ConvNet((1, 28, 28), (10, 20), (), 10)
    plain = net.costs()
    assert cwcomp.conv_costs(net) == [plain[0] + 2 * 10 * 14 * 14, plain[1] + 2 * 20 * 14 * 14]
    assert local_softmax.conv_costs(net) == net.costs(auxiliary=True)[:2]
    config = parse_config([*PIPELINE, "--conv", "10,20"])
    assert planned_blocks(config, 2, net.dims[:-1], net) == [range(0, 1), range(1, 2)]
    with pytest.raises(ValueError, match="convolutional blocks only"):
        cwcomp.make_layer(0, [784, 10], 10, config, torch.device("cpu"))


# --- refusals ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    ([*PIPELINE], r"^--objective cwcomp trains convolutional blocks only \(a channel group per class\): "
                  r"give --conv C1,C2,\.\.\.$"),
    (["--variant", "all-layers", "--objective", "cwcomp"], r"^--objective cwcomp trains convolutional blocks only"),
    ([*PIPELINE, "--conv", "10,20", "--layers", "64"],
     r"^--objective cwcomp trains convolutional blocks only, not yet dense layers after them: drop --layers 64$"),
    (["--variant", "all-layers", "--objective", "cwcomp", "--conv", "10", "--augment"],
     r"^--augment runs with .* --variant pipeline --objective local-softmax or cwcomp; not yet with --variant "
     r"all-layers$"),
    ([*PIPELINE, "--conv", "10", "--norm", "length"], r"^--norm length applies to goodness-trained FF layers"),
    ([*PIPELINE, "--conv", "10", "--neg", "fixed"], r"^--neg: settings of the ff rule"),
])
def test_cwcomp_is_refused_in_one_line_where_it_does_not_run(argv, message):
    with pytest.raises(UsageError, match=message) as refused:
        parse_config(argv)
    assert "\n" not in str(refused.value)


def test_block_channels_must_be_multiples_of_the_classes():
    config = parse_config([*PIPELINE, "--conv", "10,20"])
    validate(config, world_size=2)
    validate_shape(config, MNIST_SHAPE)
    with pytest.raises(UsageError, match=r"^mnist: --objective cwcomp gives each of the 10 classes a group of "
                                         r"channels in every block: --conv channels must be multiples of 10, "
                                         r"got 10,16$") as refused:
        validate_shape(dataclasses.replace(config, conv=(10, 16)), MNIST_SHAPE)
    assert "\n" not in str(refused.value)
    validate_shape(dataclasses.replace(config, objective="local-softmax", conv=(10, 16)), MNIST_SHAPE)


def test_augment_runs_with_the_cwcomp_pipeline():
    assert parse_config([*PIPELINE, "--conv", "10,20", "--augment"]).augment


# --- a run ---------------------------------------------------------------------------------------------------

def _textures(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n rows [n, 64] of 1 x 8 x 8 images of 4 textures, labels [n]: horizontal stripes, vertical stripes, a
    checkerboard (each at a random phase) and flat grey, 70 % pattern and 30 % uniform noise.  A texture is
    the same in every patch of its image: what the global goodness of a conv block's channel group can tell
    apart (the synthetic set's 100 features have no spatial order, so a conv net without a dense layer
    learns little from them)."""
    labels = torch.randint(0, 4, (n,), generator=generator)
    phase = torch.randint(0, 2, (n, 1, 1), generator=generator)
    i, j = torch.arange(8).view(1, 8, 1), torch.arange(8).view(1, 1, 8)
    patterns = torch.stack([(i + phase) % 2 + 0 * j, (j + phase) % 2 + 0 * i, (i + j + phase) % 2,
                            torch.full((n, 8, 8), 0.5)], dim=1).float()  # [n, 4, 8, 8]
    images = patterns[torch.arange(n), labels]
    return (0.7 * images + 0.3 * torch.rand(n, 8, 8, generator=generator)).reshape(n, 64), labels


def test_a_one_rank_pipeline_run_learns_textures():
    """The pipeline on one rank (the sequential baseline) trains every block on its own CwC loss; the run's
    accuracy is the last block's goodness argmax; the losses fall; no head is gathered."""
    from mpi4py import MPI

    from pffbench.core.world import World
    from pffbench.datasets.files import Dataset
    from pffbench.schedules.pipeline import schedule
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    data = Dataset("textures", *_textures(512, generator), *_textures(128, generator), 4, (1, 8, 8))
    shape = Shape(512, 64, 4, (1, 8, 8))
    config = dataclasses.replace(_config(), conv=(4, 8), dataset="synthetic", epochs=3, batch_size=32, lr=3e-3,
                                 threads=1, eval_every=1, seed=0)
    validate_shape(config, shape)
    result = schedule.train(config, World(MPI.COMM_SELF), shape, data)
    assert result.dims == [64, 64, 128] and result.heads == []
    assert [type(m).__name__ for m in result.linears] == ["ConvBlock"] * 2
    assert (result.loss[:, -1] < result.loss[:, 0]).all()
    last, summed = cwcomp.conv_accuracies(result.linears, ConvNet.of(config, shape), data.x_test, data.y_test,
                                           torch.device("cpu"))
    assert result.test_accuracy[-1] == last > 0.9 and summed > 0.9  # 4 classes: chance is 0.25


def test_the_performance_model_refuses_cwcomp_without_a_run_in_one_line():
    from pffbench.perfmodel import calibrate
    with pytest.raises(UsageError, match=r"^--objective cwcomp trains conv nets, which the model predicts from a "
                                         r"1-rank run of the net \(.*\), not from the MLP microbenchmarks$"):
        calibrate.measured("pipeline", [784, 100], 64, objective="cwcomp")
