"""Conv nets (--conv, issue 24): the net (learn/nets/conv.py), the flag and what it is refused with, the
images every loader hands it, and what a stored run or checkpoint without the setting means."""
import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch

from pffbench import data
from pffbench.core.config import Config, UsageError, case_settings, computing_settings, hidden_layers
from pffbench.core.types import Shape
from pffbench.data import IDX_FILES, load_dataset
from pffbench.launch import console
from pffbench.launch.cli import parse_config
from pffbench.launch.validate import validate, validate_shape
from pffbench.learn.nets.conv import ConvBlock, ConvNet, groups

from test_data import CIFAR_BATCHES, write_cifar_folder, write_idx_set, write_images

MNIST_SHAPE = Shape(60000, 784, 10, (1, 28, 28))


# --- the flag -----------------------------------------------------------------------------------------------

def test_conv_without_layers_has_no_dense_layer_and_an_mlp_keeps_its_default_widths():
    assert parse_config(["--variant", "backprop", "--conv", "16,32"]).layers == ()
    assert parse_config(["--variant", "backprop", "--conv", "16,32", "--layers", "64"]).layers == (64,)
    config = parse_config(["--variant", "backprop"])
    assert config.conv is None and config.layers == Config().layers
    assert hidden_layers(parse_config(["--variant", "backprop", "--conv", "4,8", "--layers", "5"])) == 3


@pytest.mark.parametrize("flags", [
    ["--variant", "backprop"], ["--variant", "dp-backprop"], ["--variant", "ddp"], ["--variant", "gpipe"],
    ["--variant", "1f1b"], ["--variant", "pipeline", "--objective", "local-softmax"],
    ["--variant", "pipeline", "--objective", "cwcomp"], ["--variant", "perf-opt"],
    ["--variant", "all-layers", "--objective", "local-softmax"], ["--variant", "all-layers", "--objective", "cwcomp"],
    ["--variant", "single-layer", "--objective", "local-softmax"], ["--variant", "federated", "--objective", "cwcomp"]])
def test_conv_runs_with_the_backprop_baselines_and_every_ff_variant_under_a_conv_rule(flags):
    assert parse_config([*flags, "--conv", "10,20"]).conv == (10, 20)


@pytest.mark.parametrize("flags,what", [
    (["--variant", "pipeline"], "--variant pipeline --objective ff"),
    (["--variant", "pipeline", "--objective", "ff"], "--variant pipeline --objective ff"),
    (["--variant", "pipeline", "--objective", "scff"], "--variant pipeline --objective scff"),
    (["--variant", "single-layer"], "--variant single-layer --objective ff"),
    (["--variant", "all-layers"], "--variant all-layers --objective ff"),
    (["--variant", "all-layers", "--objective", "scff"], "--variant all-layers --objective scff"),
    (["--variant", "federated"], "--variant federated --objective ff")])
def test_conv_is_refused_in_one_line_with_a_rule_that_has_no_conv_path(flags, what):
    with pytest.raises(UsageError) as error:
        parse_config([*flags, "--conv", "4,8"])
    message = str(error.value)
    assert message == ("--conv runs with the backprop baselines (backprop, dp-backprop, ddp, gpipe, 1f1b) and the "
                       "FF variants (pipeline, single-layer, all-layers, federated, perf-opt) with --objective "
                       f"local-softmax or cwcomp; not with {what}")


def test_single_layer_on_a_conv_net_needs_a_rank_per_block_and_dense_layer():
    config = parse_config(["--variant", "single-layer", "--objective", "local-softmax", "--conv", "4,8",
                           "--layers", "16"])
    validate(config, world_size=3)
    validate(config, world_size=1)
    with pytest.raises(UsageError, match=r"single-layer needs one rank per layer \(3 \(convolutional blocks and "
                                         r"dense layers\)\) or 1 rank"):
        validate(config, world_size=2)


def test_conv_channels_must_be_positive_and_ranks_at_most_its_layers():
    with pytest.raises(UsageError, match="--conv channels must be positive, got 4,0"):
        parse_config(["--variant", "backprop", "--conv", "4,0"])
    config = parse_config(["--variant", "gpipe", "--conv", "4,8", "--layers", "16"])
    validate(config, world_size=3)
    with pytest.raises(UsageError, match=r"4 ranks but only 3 hidden layers \(convolutional blocks and dense "
                                         r"layers\): use at most 3 ranks or more --conv blocks or --layers"):
        validate(config, world_size=4)
    pipeline = parse_config(["--variant", "pipeline", "--objective", "local-softmax", "--conv", "4"])
    with pytest.raises(UsageError, match=r"2 ranks but only 1 layer \(convolutional blocks"):
        validate(pipeline, world_size=2)


def test_conv_needs_images_its_pooling_does_not_shrink_below_a_pixel():
    config = parse_config(["--variant", "backprop", "--conv", "4,8"])
    validate_shape(config, MNIST_SHAPE)
    with pytest.raises(UsageError, match=r"^synthetic: --conv needs images \(C, H, W\); this data set's rows are "
                                         r"vectors of 100 features$"):
        validate_shape(dataclasses.replace(config, dataset="synthetic"), Shape(2000, 100, 10, (100,)))
    five = dataclasses.replace(config, conv=(4,) * 5)
    validate_shape(five, MNIST_SHAPE)  # 28 -> 14 -> 7 -> 3 -> 1, the last block unpooled
    with pytest.raises(UsageError, match=r"6 blocks pool 1x28x28 images below one pixel .*: use at most 5 blocks"):
        validate_shape(dataclasses.replace(config, conv=(4,) * 6), MNIST_SHAPE)
    validate_shape(Config(), Shape(2000, 100, 10, (100,)))  # an MLP: nothing to check


def test_a_run_or_checkpoint_stored_before_conv_existed_was_an_mlp(tmp_path):
    from pffbench.reliability import checkpoint
    config = dataclasses.asdict(Config())
    older = {k: v for k, v in config.items() if k != "conv"}
    assert "conv" in computing_settings(config)
    assert case_settings(older) == case_settings(config)
    assert case_settings(older) != case_settings({**config, "conv": (4, 8)})
    # a FINISHED marker written before --conv: the same run (its --resume has nothing left to do)
    run = Config(dataset="synthetic", layers=(8,), checkpoint_dir=str(tmp_path))
    marker = {"run": "r", "out": "o.h5", **checkpoint.fingerprint(run, 2)}
    del marker["config"]["conv"]
    (tmp_path / checkpoint.FINISHED).write_text(json.dumps(marker))
    assert checkpoint.finished(run, 2) is not None
    assert checkpoint.finished(dataclasses.replace(run, conv=(4,)), 2) is None


# --- the net ------------------------------------------------------------------------------------------------

def test_shapes_widths_and_costs():
    net = ConvNet((1, 28, 28), (16, 32), (64,), 10)
    assert net.shapes() == [(1, 28, 28), (16, 14, 14), (32, 14, 14), (64,), (10,)]
    assert net.dims == [784, 3136, 6272, 64, 10] and (net.num_blocks, net.num_layers) == (2, 3)
    conv0, conv1 = 2 * 1 * 9 * 16 * 28 * 28, 2 * 16 * 9 * 32 * 14 * 14
    assert net.costs() == [conv0 + 7 * 16 * 784, conv1 + 7 * 32 * 196, 2 * 6272 * 64, 2 * 64 * 10]
    auxiliary = net.costs(auxiliary=True)
    assert auxiliary[0] - net.costs()[0] == 3136 + 2 * 16 * 2 * 2 * 10  # pooling, and the head's Linear
    assert auxiliary[2] - net.costs()[2] == 64 + 2 * 64 * 10 and auxiliary[3] == net.costs()[3]
    assert [groups(c) for c in (1, 3, 4, 16, 48, 64)] == [1, 1, 4, 16, 16, 32]
    # the start line's partition is the FLOPs' (the two blocks, 2.25 MFLOP a row, against the dense layer's 0.80
    # and the head), not the MLP's weight counts of these widths (which would put block 1 with the dense layer)
    mnist = Config(variant="gpipe", conv=(16, 32), layers=(64,))
    assert console.planned_blocks(mnist, 2, net.dims[:-1], net) == [range(0, 2), range(2, 4)]
    assert console.planned_blocks(mnist, 2, net.dims[:-1]) == [range(0, 1), range(1, 4)]
    assert console.net_text(net) == "[1x28x28, 16x14x14, 32x14x14, 64]"


def test_initial_weights_depend_on_seed_and_layer_index_only():
    net = ConvNet((3, 8, 8), (4, 8), (5,), 10)
    a, b = net.model(seed=7), net.model(seed=7)
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    alone = net.make_layer(1, seed=7)  # built on its own, as a pipeline stage builds it
    assert torch.equal(alone.conv.weight, a.hidden[1].conv.weight)
    assert not torch.equal(net.make_layer(1, seed=8).conv.weight, alone.conv.weight)
    assert alone.conv.bias is None and alone.conv.weight.abs().max() <= (4 * 9) ** -0.5
    assert torch.equal(net.make_layer(3, seed=7).weight, a.head.weight)  # the head is layer 3
    with pytest.raises(IndexError):
        net.make_layer(4, seed=7)


def test_a_block_normalizes_each_example_on_its_own():
    """What makes data-parallel shards and microbatches compute what one process computes."""
    torch.manual_seed(0)
    model = ConvNet((3, 8, 8), (4, 8), (5,), 10).model(seed=1)
    x = torch.rand(12, 3 * 8 * 8)
    whole = model(x)
    parts = torch.cat([model(x[:5]), model(x[5:])])
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-6)
    assert whole.shape == (12, 10)
    blocks = model.hidden[:2]
    assert blocks[0](x).shape == (12, 4, 4, 4) and blocks[1](blocks[0](x)).shape == (12, 8, 4, 4)


# --- the images every loader hands the first block ----------------------------------------------------------

def _first_block_input(dataset) -> torch.Tensor:
    """What the first block's convolution receives for the dataset's first training row: [C, H, W]."""
    block = ConvNet(dataset.image_shape, (2,), (), dataset.num_classes).make_layer(0, seed=0)
    seen = []
    block.conv.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    block(dataset.x_train[:1])
    return seen[0][0]


def _expect(pixels_hwc: np.ndarray) -> torch.Tensor:
    """An image given as rows x columns x channels, as a conv net must see it: channels x rows x columns."""
    return torch.from_numpy(pixels_hwc.transpose(2, 0, 1).astype(np.float32) / 255)


def test_mnist_rows_reach_the_convolution_as_images(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    arrays = {IDX_FILES[0]: rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), IDX_FILES[1]: np.arange(3),
              IDX_FILES[2]: rng.integers(0, 256, (2, 28, 28), dtype=np.uint8), IDX_FILES[3]: np.arange(2)}
    arrays[IDX_FILES[0]][0] = np.arange(28 * 28).reshape(28, 28) % 251  # a different value a row and column
    monkeypatch.setitem(data.MD5, "mnist", write_idx_set(tmp_path / "mnist", arrays)["mnist"])
    monkeypatch.setitem(data.BUNDLED_DIRS, "mnist", tmp_path / "no-bundle")
    seen = _first_block_input(load_dataset("mnist", tmp_path))
    assert torch.equal(seen, _expect(arrays[IDX_FILES[0]][0][:, :, None]))


def test_cifar_rows_reach_the_convolution_as_images(tmp_path):
    """CIFAR-10's batches hold each image as its red plane, then green, then blue, each row by row (the
    format's documentation): the convolution must see those planes as its channels."""
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)  # rows x columns x (red, green, blue)
    images[0, :, :, 0], images[0, :, :, 2] = 255, 0  # image 0: all red, no blue
    rows = images.transpose(0, 3, 1, 2).reshape(3, 3072)
    batch = pickle.dumps({b"labels": [0, 1, 2], b"data": rows})
    write_cifar_folder(tmp_path / data.CIFAR_FOLDER, {name: batch for name in CIFAR_BATCHES})
    seen = _first_block_input(load_dataset("cifar10", tmp_path))
    assert torch.equal(seen, _expect(images[0]))
    assert (seen[0] == 1).all() and (seen[2] == 0).all()


def test_image_folder_rows_reach_the_convolution_as_images(tmp_path):
    """PIL decodes rows x columns x channels; the loader must hand the conv net channels x rows x columns."""
    pixels = np.zeros((4, 6, 3), np.uint8)  # 4 rows, 6 columns
    pixels[:, 1, 0] = 200  # a red column
    pixels[2, :, 1] = 100  # a green row
    pixels[3, 5, 2] = 50   # one blue pixel
    write_images(tmp_path, {"train": {"a": [pixels], "b": [pixels]}, "test": {"a": [pixels], "b": [pixels]}})
    dataset = load_dataset("imagefolder", tmp_path)
    assert dataset.image_shape == (3, 4, 6)
    seen = _first_block_input(dataset)
    assert torch.equal(seen, _expect(pixels))
    assert (seen[0, :, 1] > 0).all() and (seen[1, 2] > 0).all() and seen[2, 3, 5] > 0 and seen[2].sum() == seen[2, 3, 5]
