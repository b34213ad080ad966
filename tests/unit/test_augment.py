"""--augment (learn/augment.py, issue 24): the crop-and-flip arithmetic, its draws, the flag and what it is
refused with, and where the schedules apply it: each training minibatch, never the test rows, and nothing
drawn without it.  One process (MPI.COMM_SELF), no mpiexec; the p-rank checks are tests/mpi/test_augment_mpi.py."""
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from pffbench.core.config import Config, UsageError, case_settings, computing_settings
from pffbench.core.types import Shape
from pffbench.datasets.files import Dataset
from pffbench.launch.cli import parse_config
from pffbench.launch.validate import validate_shape
from pffbench.learn import augment
from pffbench.learn.augment import PAD, Draws, crop_and_flip, draw

IMAGE = (2, 6, 7)  # C, H, W: not square, so a transposed index would show


def _images(n: int = 3) -> torch.Tensor:
    """n distinct images [n, 2, 6, 7], no pixel zero (a padded zero is then told from a pixel)."""
    return torch.arange(1, n * 2 * 6 * 7 + 1, dtype=torch.float32).reshape(n, *IMAGE)


def _draws(shifts, flips) -> Draws:
    return Draws(torch.tensor(shifts), torch.tensor(flips))


# --- the arithmetic -----------------------------------------------------------------------------------------

def test_shape_dtype_and_device_are_kept_and_the_centre_unflipped_crop_is_the_image():
    x = _images(4).double()
    out = crop_and_flip(x, _draws([[PAD, PAD]] * 4, [False] * 4))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert torch.equal(out, x)
    assert torch.equal(x, _images(4).double())  # the input is not touched


@pytest.mark.parametrize("dy,dx", [(0, 0), (PAD + 1, PAD - 2), (2 * PAD, 2 * PAD), (PAD, 0), (3, 8)])
def test_with_zero_padding_a_crop_is_the_image_shifted(dy, dx):
    """Crop offset (dy, dx) of the padded image: pixel (y, x) is the image's (y + dy - PAD, x + dx - PAD),
    zero where that falls outside."""
    x = _images(1)
    out = crop_and_flip(x, _draws([[dy, dx]], [False]))[0]
    _, height, width = IMAGE
    expected = torch.zeros(IMAGE)
    for y in range(height):
        for col in range(width):
            sy, sx = y + dy - PAD, col + dx - PAD
            if 0 <= sy < height and 0 <= sx < width:
                expected[:, y, col] = x[0, :, sy, sx]
    assert torch.equal(out, expected)


def test_flip_mirrors_left_to_right_after_the_crop():
    x = _images(2)
    assert torch.equal(crop_and_flip(x, _draws([[PAD, PAD]] * 2, [True, False])), torch.stack([x[0].flip(-1), x[1]]))
    shifted = crop_and_flip(x, _draws([[1, 6], [1, 6]], [False, False]))
    assert torch.equal(crop_and_flip(x, _draws([[1, 6], [1, 6]], [True, True])), shifted.flip(-1))
    # torchvision's order (RandomCrop, then RandomHorizontalFlip), written out with F.pad and slicing
    padded = F.pad(x[:1], (PAD,) * 4)
    assert torch.equal(crop_and_flip(x[:1], _draws([[1, 6]], [True])), padded[:, :, 1:7, 6:13].flip(-1))


def test_each_example_is_augmented_on_its_own():
    """A minibatch split anywhere (ranks, microbatches) augments as the whole one does, bit for bit."""
    x, g = torch.randn(10, *IMAGE, generator=torch.Generator().manual_seed(1)), torch.Generator().manual_seed(2)
    draws = draw(10, g)
    whole = crop_and_flip(x, draws)
    assert torch.equal(torch.cat([crop_and_flip(x[:3], draws[:3]), crop_and_flip(x[3:], draws[3:])]), whole)
    picked = torch.tensor([7, 2, 5])
    assert torch.equal(crop_and_flip(x[picked], draws[picked]), whole[picked])


def test_rows_are_viewed_as_images_in_c_h_w_order():
    x = _images(3)
    draws = _draws([[0, 3], [5, 8], [4, 4]], [True, False, True])
    rows = augment.augment_rows(x.reshape(3, -1), IMAGE, draws)
    assert rows.shape == (3, 2 * 6 * 7) and torch.equal(rows, crop_and_flip(x, draws).reshape(3, -1))


# --- the draws ----------------------------------------------------------------------------------------------

def test_the_same_seed_gives_the_same_draws_and_batch_and_the_draws_cover_every_offset():
    x = _images(3)
    one, two = draw(500, torch.Generator().manual_seed(7)), draw(500, torch.Generator().manual_seed(7))
    assert torch.equal(one.shifts, two.shifts) and torch.equal(one.flips, two.flips)
    assert torch.equal(crop_and_flip(x, one[:3]), crop_and_flip(x, two[:3]))
    other = draw(500, torch.Generator().manual_seed(8))
    assert not torch.equal(one.shifts, other.shifts)
    assert one.shifts.dtype == torch.int64 and one.flips.dtype == torch.bool
    assert set(one.shifts.flatten().tolist()) == set(range(2 * PAD + 1))  # 0..8, each equally likely
    assert 0.4 < one.flips.float().mean().item() < 0.6


def test_a_draw_advances_the_generator_by_its_two_draws_only():
    """What a checkpoint's generator state holds: after the permutation and the draws, exactly these."""
    g, h = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    draws = draw(64, g)
    assert torch.equal(draws.shifts, torch.randint(0, 2 * PAD + 1, (64, 2), generator=h))
    assert torch.equal(draws.flips, torch.randint(0, 2, (64,), generator=h).bool())
    assert torch.equal(g.get_state(), h.get_state())


# --- the flag -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags", [
    ["--variant", "backprop"], ["--variant", "dp-backprop"], ["--variant", "ddp"], ["--variant", "gpipe"],
    ["--variant", "1f1b"], ["--variant", "pipeline", "--objective", "local-softmax"]])
def test_augment_runs_with_the_backprop_baselines_and_the_local_softmax_pipeline(flags):
    assert parse_config([*flags, "--augment"]).augment and not parse_config(flags).augment
    assert parse_config([*flags, "--augment", "--conv", "4,8"]).augment


@pytest.mark.parametrize("flags,what", [
    (["--variant", "pipeline"], "--variant pipeline --objective ff"),
    (["--variant", "pipeline", "--objective", "scff"], "--variant pipeline --objective scff"),
    (["--variant", "single-layer"], "--variant single-layer"),
    (["--variant", "all-layers", "--objective", "local-softmax"], "--variant all-layers"),
    (["--variant", "federated"], "--variant federated"),
    (["--variant", "perf-opt"], "--variant perf-opt")])
def test_augment_is_refused_in_one_line_where_it_does_not_run_yet(flags, what):
    with pytest.raises(UsageError) as error:
        parse_config([*flags, "--augment"])
    assert str(error.value) == ("--augment runs with the backprop baselines (backprop, dp-backprop, ddp, gpipe, "
                                f"1f1b) and --variant pipeline --objective local-softmax or cwcomp; not yet with "
                                f"{what}")


def test_augment_needs_images():
    config = parse_config(["--variant", "backprop", "--augment", "--dataset", "synthetic"])
    with pytest.raises(UsageError, match=r"^synthetic: --augment crops and flips images, and its rows are vectors "
                                         r"\(100 values\)$"):
        validate_shape(config, Shape(2000, 100, 10, (100,)))
    validate_shape(config, Shape(60000, 784, 10, (1, 28, 28)))
    validate_shape(dataclasses.replace(config, augment=False), Shape(2000, 100, 10, (100,)))


def test_a_run_or_checkpoint_stored_before_augment_existed_ran_without(tmp_path):
    from pffbench.reliability import checkpoint
    config = dataclasses.asdict(Config())
    older = {k: v for k, v in config.items() if k != "augment"}
    assert "augment" in computing_settings(config)
    assert case_settings(older) == case_settings(config)
    assert case_settings(older) != case_settings({**config, "augment": True})
    run = Config(dataset="synthetic", layers=(8,), checkpoint_dir=str(tmp_path))
    marker = {"run": "r", "out": "o.h5", **checkpoint.fingerprint(run, 1)}
    del marker["config"]["augment"]
    (tmp_path / checkpoint.FINISHED).write_text(json.dumps(marker))
    assert checkpoint.finished(run, 1) is not None
    assert checkpoint.finished(dataclasses.replace(run, augment=True), 1) is None


# --- where it is applied ------------------------------------------------------------------------------------

def _image_set(train: int = 96, test: int = 40) -> Dataset:
    """4 classes of 1 x 8 x 8 images: class k a bright 3x3 patch near corner k, on noise."""
    g = torch.Generator().manual_seed(0)

    def rows(n):
        y = torch.arange(n) % 4
        x = 0.3 * torch.rand(n, 1, 8, 8, generator=g)
        for i, k in enumerate(y.tolist()):
            top, left = 1 + 4 * (k // 2), 1 + 4 * (k % 2)
            x[i, 0, top:top + 3, left:left + 3] = 1.0
        return x.reshape(n, 64), y
    x_train, y_train = rows(train)
    x_test, y_test = rows(test)
    return Dataset("images", x_train, y_train, x_test, y_test, num_classes=4, image_shape=(1, 8, 8))


def _shape(dataset: Dataset) -> Shape:
    return Shape.of(dataset)


def _backprop(config: Config, dataset: Dataset):
    from mpi4py import MPI
    from pffbench.core.world import World
    from pffbench.schedules.backprop import data_parallel
    return data_parallel.train(config, World(MPI.COMM_SELF), _shape(dataset), dataset)


SMALL = Config(variant="backprop", dataset="images", conv=(4,), layers=(), epochs=2, batch_size=32, lr=1e-2,
               threads=1, eval_every=1, quiet=True)


def test_the_backprop_loop_augments_training_rows_only(monkeypatch):
    """Every training row of every epoch goes through the augmentation once, by its minibatch; the test
    accuracy is that of the trained net on the test rows as they are."""
    from pffbench.schedules.backprop.mlp import layers_accuracy
    from pffbench.learn.nets.conv import ConvNet
    dataset, seen = _image_set(), []
    real = augment.augment_rows

    def spy(rows, image_shape, draws):
        seen.append(rows.clone())
        return real(rows, image_shape, draws)
    monkeypatch.setattr(augment, "augment_rows", spy)
    result = _backprop(dataclasses.replace(SMALL, augment=True), dataset)
    assert [len(rows) for rows in seen] == [32, 32, 32] * 2
    training = {tuple(row.tolist()) for row in dataset.x_train}
    assert all(tuple(row.tolist()) in training for rows in seen for row in rows)
    net = ConvNet.of(SMALL, _shape(dataset))
    assert result.test_accuracy[-1] == layers_accuracy(result.linears, dataset.x_test, dataset.y_test, net)
    plain = _backprop(SMALL, dataset)
    assert not torch.equal(plain.linears[0].conv.weight, result.linears[0].conv.weight)  # it did augment


def test_without_augment_nothing_more_is_drawn(monkeypatch):
    """An MLP or conv run without --augment computes what it computed before the flag: no draw at all."""
    from pffbench.learn.rules import local_softmax

    def refuse(*_):
        raise AssertionError("drawn without --augment")
    monkeypatch.setattr(augment, "draw", refuse)
    monkeypatch.setattr(augment, "augment_rows", refuse)
    dataset = _image_set()
    _backprop(dataclasses.replace(SMALL, conv=None, layers=(16,), epochs=1), dataset)
    source = local_softmax.Source(dataset, Config(), torch.device("cpu"), [32, 32, 32])
    generator = torch.Generator().manual_seed(0)
    source.start_epoch()
    order = torch.randperm(96, generator=generator)
    assert torch.equal(source.generator.get_state(), generator.get_state())
    x, side = source.batch(1)
    rows = order[32:64]
    assert torch.equal(x, local_softmax.Source.first_rows(dataset.x_train, 4)[rows])
    assert torch.equal(side[:, 0].long(), dataset.y_train[rows])


@pytest.mark.parametrize("conv", [True, False])
def test_the_local_softmax_source_augments_each_minibatch_then_makes_the_first_layers_rows(conv):
    """Rank 0's minibatches for the pipeline: the permutation, then the epoch's crops and flips from the same
    generator (one checkpointed state); the images augmented before the neutral label is embedded (an MLP)."""
    from pffbench.learn.rules import local_softmax
    dataset = _image_set()
    kind = local_softmax.ConvSource if conv else local_softmax.Source
    source = kind(dataset, Config(augment=True, seed=5), torch.device("cpu"), [32, 32, 32])
    generator = torch.Generator().manual_seed(5)
    for _ in range(2):  # two epochs: fresh draws each
        source.start_epoch()
        order = torch.randperm(96, generator=generator)
        draws = draw(96, generator)
        assert torch.equal(source.generator.get_state(), generator.get_state())
        for b in range(3):
            x, side = source.batch(b)
            rows = order[32 * b:32 * b + 32]
            images = augment.augment_rows(dataset.x_train[rows], (1, 8, 8), draws[32 * b:32 * b + 32])
            assert torch.equal(x, images if conv else local_softmax.Source.first_rows(images, 4))
            assert torch.equal(side[:, 0].long(), dataset.y_train[rows])
