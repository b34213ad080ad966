"""Every optimizer a trainer steps with is core/optim.py's fused Adam: the unfused default costs as much as
the matmuls at batch 64 (core/optim.py), and a layer that made its own fell back to it unnoticed (the
local-softmax, cwcomp, Performance-Optimized and softmax-head layers did)."""
import pytest
import torch

from pffbench.core import optim
from pffbench.ff import heads
from pffbench.launch.cli import parse_config
from pffbench.learn import rules
from pffbench.learn.nets.conv import ConvNet
from pffbench.schedules.backprop.trainer import Trainer

CPU = torch.device("cpu")


def assert_fused(optimizer):
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["fused"] is True


@pytest.mark.parametrize("objective", [name for name in rules.OBJECTIVES if name != "cwcomp"])
def test_every_rules_mlp_layer_steps_with_the_fused_adam(objective):
    config = parse_config(["--variant", "pipeline", "--objective", objective, "--layers", "8,8",
                           "--dataset", "synthetic"])
    layer = rules.module(objective).make_layer(0, [100, 8, 8], 10, config, CPU)
    assert_fused(layer.optimizer)


@pytest.mark.parametrize("objective", ["local-softmax", "cwcomp"])
def test_every_rules_conv_layer_steps_with_the_fused_adam(objective):
    dense = ["--layers", "8"] if objective == "local-softmax" else []  # cwcomp: blocks only
    config = parse_config(["--variant", "pipeline", "--objective", objective, "--conv", "10,20", *dense,
                           "--dataset", "synthetic"])
    net = ConvNet((1, 8, 8), (10, 20), (8,) if dense else (), 10)
    for index in range(net.num_layers):
        assert_fused(rules.module(objective).make_conv_layer(index, net, config, CPU).optimizer)


def test_heads_backprop_trainers_and_scaled_layers_step_with_the_fused_adam():
    assert_fused(heads.SoftmaxHead(heads.zero_linear(8, 10), 1e-4).optimizer)
    assert_fused(Trainer(torch.nn.Linear(8, 8), 1e-3, timer=None).optimizer)
    config = parse_config(["--variant", "pipeline", "--layers", "8,8", "--norm", "length", "--dataset", "synthetic"])
    layer = rules.module("ff").make_layer(0, [100, 8, 8], 10, config, CPU)  # weights and biases in two groups
    assert_fused(layer.optimizer)
    optim.set_lr(layer.optimizer, 0.5)
    assert [group["lr"] for group in layer.optimizer.param_groups] == [0.5 * layer.optimizer.param_groups[0]
                                                                       ["lr_scale"], 0.5]


def test_a_checkpoint_of_an_unfused_adam_resumes_fused():
    # torch restores a saved group's settings: a checkpoint from before every trainer was fused would resume slow
    linear = torch.nn.Linear(8, 8)
    old = torch.optim.Adam(linear.parameters(), lr=1e-3)
    linear(torch.ones(2, 8)).sum().backward()
    old.step()
    resumed = optim.adam(linear.parameters(), 1e-3)
    optim.load_state(resumed, old.state_dict())
    assert all(group["fused"] is True for group in resumed.param_groups)
    assert torch.equal(resumed.state[linear.weight]["exp_avg"], old.state[linear.weight]["exp_avg"])
    resumed.step()  # and it steps
