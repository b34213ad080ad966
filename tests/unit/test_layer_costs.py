"""probes/layer_costs.py: each layer's measured step time, and --layer-costs, the partition it sets."""
import pytest
import torch

from pffbench.core.config import UsageError
from pffbench.core.types import Shape
from pffbench.launch import console
from pffbench.launch.cli import parse_config
from pffbench.learn.nets.conv import ConvNet
from pffbench.probes import layer_costs

IMAGES = Shape(200, 3 * 16 * 16, 10, (3, 16, 16))


def test_a_conv_nets_layers_each_get_a_positive_time_and_the_flag_gives_their_ratios():
    torch.set_num_threads(1)
    config = parse_config(["--objective", "local-softmax", "--conv", "8,16", "--layers", "32", "--batch-size", "16"])
    seconds = layer_costs.measure(config, IMAGES, warmup=1, repeats=3)
    assert len(seconds) == 3 and all(s > 0 for s in seconds)
    flag = layer_costs.costs_flag([0.0123, 0.0000001, 0.5])
    assert flag == "--layer-costs 12300,1,500000"
    assert parse_config(flag.split() + ["--objective", "local-softmax", "--layers", "8,8,8"]).layer_costs == \
        (12300, 1, 500000)


def test_an_mlp_of_a_generic_rule_is_measured_and_ff_and_the_unsplit_baselines_are_refused():
    config = parse_config(["--objective", "local-softmax", "--layers", "16,16", "--batch-size", "8"])
    assert len(layer_costs.measure(config, Shape(100, 100, 10), warmup=0, repeats=1)) == 2
    for argv in (["--layers", "16,16"], ["--variant", "backprop", "--layers", "16,16"],
                 ["--variant", "ddp", "--layers", "16,16"]):
        with pytest.raises(UsageError, match="modelled"):
            layer_costs.measure(parse_config(argv), Shape(100, 100, 10))


@pytest.mark.parametrize("variant", ["gpipe", "1f1b"])
def test_the_backprop_pipelines_layers_are_timed_as_their_stages_run_them(variant):
    # gpipe/1f1b split a conv net by its FLOPs otherwise: on CIFAR-10's --conv 20,80,160,320 that gives
    # rank 0 blocks 0-2, several times rank 1's time (docs/measurements.md)
    torch.set_num_threads(1)
    config = parse_config(["--variant", variant, "--conv", "8,16", "--layers", "32", "--batch-size", "16",
                           "--microbatches", "4"])
    seconds = layer_costs.measure(config, IMAGES, warmup=1, repeats=2)
    assert len(seconds) == 3 and all(s > 0 for s in seconds)  # the hidden layers; the head goes with the last
    steps = layer_costs._backprop_steps(config, IMAGES, torch.device("cpu"))
    assert [len(step.layers) for step in steps] == [1, 1, 2]  # the head goes with the last stage
    for step in steps:  # a stage's share of a minibatch: its passes, then one Adam step of its linears
        before = [p.detach().clone() for layer in step.layers for p in layer.parameters()]
        step()
        assert all(not torch.equal(a, b) for a, b in zip(before, (p for l in step.layers for p in l.parameters())))


def test_the_start_line_shows_the_partition_of_the_given_costs_not_the_modelled_one():
    net = ConvNet((3, 16, 16), (8, 16), (32,), 10)
    modelled = parse_config(["--objective", "local-softmax", "--conv", "8,16", "--layers", "32"])
    measured = parse_config(["--objective", "local-softmax", "--conv", "8,16", "--layers", "32",
                             "--layer-costs", "1,1,5"])
    assert console.planned_blocks(measured, 2, net.dims[:-1], net) == [range(0, 2), range(2, 3)]
    assert console.planned_blocks(modelled, 2, net.dims[:-1], net) == [range(0, 1), range(1, 3)]  # the FLOPs'
    gpipe = parse_config(["--variant", "gpipe", "--conv", "8,16", "--layers", "32", "--layer-costs", "1,1,5"])
    assert console.planned_blocks(gpipe, 2, net.dims[:-1], net) == [range(0, 2), range(2, 4)]  # the head last


@pytest.mark.parametrize("argv, needle", [
    (["--layer-costs", "1,2"], "--layer-costs needs 4 positive costs, one per hidden layer, got 1,2"),
    (["--objective", "local-softmax", "--conv", "8,16", "--layer-costs", "3,0"], "(convolutional blocks"),
    (["--variant", "ddp", "--layer-costs", "1,2,3,4"], "--variant ddp does not split its layers"),
])
def test_bad_layer_costs_get_one_line(argv, needle):
    with pytest.raises(UsageError, match=None) as error:
        parse_config(argv)
    assert needle in str(error.value) and "\n" not in str(error.value)
