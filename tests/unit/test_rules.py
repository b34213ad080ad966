"""The registry of local learning rules (pffbench/learn/rules, --objective):
each rule's step, what travels, its classifier, and the rules under the
chapter schedules on one rank.  The pipeline's p-versus-1 test is in
tests/mpi/test_pipeline_mpi.py."""
import dataclasses
import importlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pffbench import ff
from pffbench.launch.cli import parse_config
from pffbench.core.config import Config, UsageError
from pffbench.core.types import Shape
from pffbench.core.variants import VARIANTS
from pffbench.data import load_dataset
from pffbench.learn import rules
from pffbench.learn.rules import local_softmax, scff

REFERENCE = Path(__file__).parent / "data" / "perf_opt_609dd2f.pt"


@pytest.fixture(scope="module")
def synthetic():
    torch.set_num_threads(1)
    data = load_dataset("synthetic")
    return data, Shape.of(data)


def train(config, synthetic):
    from mpi4py import MPI

    from pffbench.core.world import World
    data, shape = synthetic
    return importlib.import_module(VARIANTS[config.variant].module).train(config, World(MPI.COMM_SELF), shape, data)


def test_every_rule_module_offers_the_registry_names():
    for name in rules.OBJECTIVES:
        module = rules.module(name)
        for attribute in ("NEEDS_NEGATIVES", "input_width", "message_rows", "make_layer", "step", "accuracy",
                          "health"):
            assert hasattr(module, attribute), (name, attribute)
        assert module.__doc__ and module.message_rows(5) in (5, 10)
    assert rules.module("ff").NEEDS_NEGATIVES and not rules.module("scff").NEEDS_NEGATIVES


def test_objective_defaults_to_the_variants_rule():
    assert rules.objective_of(parse_config([])) == "ff"
    assert rules.objective_of(parse_config(["--variant", "perf-opt"])) == "local-softmax"
    assert rules.objective_of(parse_config(["--variant", "backprop"])) is None
    assert parse_config(["--variant", "all-layers", "--objective", "scff"]).objective == "scff"


@pytest.mark.parametrize("argv, message", [
    (["--variant", "perf-opt", "--objective", "scff"], "perf-opt is all-layers with --objective local-softmax"),
    (["--variant", "ddp", "--objective", "ff"], "ddp trains by backprop"),
    (["--variant", "all-layers", "--objective", "local-softmax", "--classifier", "softmax"], "--classifier"),
    (["--objective", "scff", "--score-layers", "1"], "--score-layers"),
])
def test_combinations_that_do_not_fit_are_refused_in_one_line(argv, message):
    with pytest.raises(UsageError, match=message) as refused:
        parse_config(argv)
    assert "\n" not in str(refused.value)


def test_perf_opt_keeps_the_weights_of_609dd2f(synthetic):
    """--variant perf-opt (now All-Layers x local-softmax) against the weights
    saved from the old perf_opt.py (commit 609dd2f, tools: one rank, one
    thread).  1e-5: a CPU whose BLAS sums in another order may differ by
    round-off; a changed rule (seed, head, lr, order) differs by ~1e-2."""
    config = Config(variant="perf-opt", dataset="synthetic", layers=(32, 32, 32), epochs=2, batch_size=50, lr=3e-3,
                    threads=1)
    result = train(config, synthetic)
    reference = torch.load(REFERENCE)
    for linear, (weight, bias) in zip(result.linears, reference["linears"], strict=True):
        torch.testing.assert_close(linear.weight, weight, atol=1e-5, rtol=0)
        torch.testing.assert_close(linear.bias, bias, atol=1e-5, rtol=0)
    for head, (weight, bias) in zip(result.heads, reference["heads"], strict=True):
        torch.testing.assert_close(head.weight, weight, atol=1e-5, rtol=0)
    # and the same thing asked for as all-layers x local-softmax: bit for bit
    same = train(dataclasses.replace(config, variant="all-layers", objective="local-softmax"), synthetic)
    for a, b in zip(result.linears + result.heads, same.linears + same.heads, strict=True):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert same.test_accuracy[-1] == result.test_accuracy[-1]


def test_local_softmax_step_is_the_perf_opt_step_and_passes_on_its_own_forward():
    config = Config(layers=(12, 8), seed=3)
    dims = [20, 12, 8]
    a = local_softmax.make_layer(0, dims, 4, config, torch.device("cpu"))
    b = local_softmax.make_layer(0, dims, 4, config, torch.device("cpu"))
    x, y = ff.normalize(torch.randn(6, 20)), torch.tensor([0, 1, 2, 3, 0, 1])
    before = a.forward(x).detach()
    for _ in range(3):
        activity, loss = local_softmax.step(a, x, y.float().unsqueeze(1), 6)
        expected = b.train_step(x, y)
        assert torch.equal(loss, expected)
    assert torch.equal(a.linear.weight, b.linear.weight) and torch.equal(a.head.weight, b.head.weight)
    activity_first = local_softmax.make_layer(0, dims, 4, config, torch.device("cpu"))
    assert torch.equal(local_softmax.step(activity_first, x, y.float().unsqueeze(1), 6)[0], before)
    assert activity.shape == (6, 12) and not activity.requires_grad


def test_scff_pairs_positive_is_the_example_twice_negative_another_beside_it():
    x = torch.rand(50, 7)
    partners = scff.draw_partners(50, torch.Generator().manual_seed(0))
    assert not (partners == torch.arange(50)).any() and partners.min() >= 0 and partners.max() < 50
    rows = torch.tensor([3, 9, 11])
    both = scff.pairs(x, rows, partners[rows])
    assert both.shape == (6, 14)
    raw = lambda left, right: ff.normalize(torch.cat((x[left], x[right])).unsqueeze(0))[0]  # noqa: E731
    for i, k in enumerate(rows.tolist()):
        torch.testing.assert_close(both[i], raw(k, k))
        torch.testing.assert_close(both[3 + i], raw(k, int(partners[k])))


def test_scff_step_gradient_matches_autograd():
    """The scff step is FFLayer's hand-written gradient on the pairs: autograd of
    ff_loss(goodness(relu(W x + b))) gives the same update direction (one plain SGD step)."""
    torch.manual_seed(0)
    x = torch.rand(40, 6)
    both = scff.pairs(x, torch.arange(8), scff.draw_partners(40, torch.Generator().manual_seed(1))[:8])
    config = Config(layers=(5,), threshold=0.5, sharpness=4.0)
    layer = scff.make_layer(0, [12, 5], 10, config, torch.device("cpu"))
    weight, bias = layer.linear.weight.detach().clone().requires_grad_(), layer.linear.bias.detach().clone().requires_grad_()
    loss = ff.ff_loss(ff.goodness(F.relu(both @ weight.t() + bias)), 8, 0.5, 4.0)
    loss.backward()
    layer.optimizer = torch.optim.SGD(layer.linear.parameters(), lr=1.0)
    _, hand_loss = scff.step(layer, both, None, 8)
    torch.testing.assert_close(hand_loss, loss.detach())
    torch.testing.assert_close(layer.linear.weight.detach(), (weight - weight.grad).detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(layer.linear.bias.detach(), (bias - bias.grad).detach(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("variant", ["all-layers", "single-layer", "federated"])
@pytest.mark.parametrize("objective", ["local-softmax", "scff"])
def test_rules_under_the_chapter_schedules_learn(variant, objective, synthetic):
    config = Config(variant=variant, objective=objective, dataset="synthetic", layers=(32, 32), epochs=2,
                    batch_size=50, threads=1)
    result = train(config, synthetic)
    assert result.test_accuracy[-1] > 0.5  # 10 classes: chance is 0.1
    assert result.dims[0] == rules.module(objective).input_width(synthetic[1].num_features)
    assert result.attrs["negatives"] == "none"


def test_the_collapse_check_sees_the_inputs_and_threshold_of_the_rule(capsys):
    """schedules/ending.py checks a run's layers as its rule trains them: scff's 2d-wide first layer on the
    positive [x, x] with no label (on x it cannot even run), local-softmax's without goodness; the PFF kinds
    and the pipeline (the rule's ``health``) pass the same."""
    from types import SimpleNamespace

    import numpy as np
    from mpi4py import MPI

    from pffbench.instrument.timer import EpochTimer
    from pffbench.schedules import ending
    from pffbench.schedules.pff import kinds
    config = Config(epochs=1)
    assert rules.module("ff").health(config) == (config.threshold, None)
    assert local_softmax.health(config) == (None, None)
    assert scff.health(config) == (config.threshold, scff.positive)
    kind = kinds.SCFFKind(config, [30, 8, 8], 10, torch.device("cpu"))
    assert (kind.health_threshold, kind.health_inputs) == scff.health(config)
    assert kinds.PerfOptKind(config, [30, 8], 10, torch.device("cpu")).health_threshold is None

    torch.manual_seed(0)
    dataset = SimpleNamespace(x_test=torch.rand(200, 30), y_test=torch.randint(0, 10, (200,)), num_classes=10)
    first, dead = torch.nn.Linear(60, 8), torch.nn.Linear(8, 8)
    with torch.no_grad():
        dead.weight.zero_()
        dead.bias.fill_(-1.0)  # every unit dead
    timer = EpochTimer(1)
    timer.start_epoch(0)
    timer.end_epoch()
    threshold, inputs = scff.health(config)
    result = ending.finish(config, MPI.COMM_SELF, timer, 100, loss=np.zeros((2, 1)), test_accuracy=np.array([0.5]),
                           linears=[first, dead], dims=[60, 8, 8], blocks=[range(2)], check_health=True,
                           health_threshold=threshold, health_inputs=inputs)
    ending.check_health(result, dataset, 0.03, "rms")
    assert result.attrs["collapsed_layers"] == [1] and "layer 1 is silent" in capsys.readouterr().err
