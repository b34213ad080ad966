"""The PFF family's pure-torch parts: negatives, heads, shards, time accounts, and its flags."""

import numpy as np
import pytest
import torch

from pffbench.launch.cli import parse_config
from pffbench.core.config import UsageError
from pffbench.core.partition import shard_rows
from pffbench.launch.validate import validate
from pffbench.ff import heads
from pffbench.ff.negatives import Negatives, most_predicted_wrong, sampled_wrong, generator
from pffbench.instrument.timer import COLUMNS, GapTimer
from pffbench.schedules.pff.chapters import chapter_table
from pffbench.presets import PRESETS

LABELS = torch.randint(0, 10, (3000,), generator=torch.Generator().manual_seed(3))


def confident_scores(labels, wrong_favourite=None):
    """Scores that put the true label first (and, if given, one wrong label second)."""
    scores = torch.randn(len(labels), 10, generator=torch.Generator().manual_seed(4))
    scores[torch.arange(len(labels)), labels] += 50.0
    if wrong_favourite is not None:
        scores[torch.arange(len(labels)), wrong_favourite] += 20.0
    return scores


@pytest.mark.parametrize("strategy", ["random", "fixed", "adaptive", "adaptive-sampled"])
def test_negatives_never_carry_the_true_label(strategy):
    negatives = Negatives(strategy, LABELS, 10, seed=1)
    for chapter in range(3):
        assert not (negatives.for_chapter(chapter) == LABELS).any()
        negatives.observe(confident_scores(LABELS))


def test_adaptive_negatives_are_the_most_predicted_wrong_label():
    favourite = (LABELS + 3) % 10
    negatives = Negatives("adaptive", LABELS, 10, seed=1)
    negatives.observe(confident_scores(LABELS, favourite))
    assert torch.equal(negatives.for_chapter(1), favourite)
    assert torch.equal(most_predicted_wrong(confident_scores(LABELS, favourite), LABELS), favourite)


def test_adaptive_sampled_follows_the_softmax_over_wrong_labels():
    favourite = (LABELS + 5) % 10
    logits = torch.zeros(len(LABELS), 10)
    logits[torch.arange(len(LABELS)), favourite] = np.log(9.0 * 8)  # p(favourite) = 72 / (72 + 8) = 0.9
    drawn = sampled_wrong(logits, LABELS, generator(0))
    assert not (drawn == LABELS).any()
    assert (drawn == favourite).float().mean().item() == pytest.approx(0.9, abs=0.03)


def test_fixed_negatives_never_change_and_random_ones_do():
    fixed = Negatives("fixed", LABELS, 10, seed=1)
    assert all(torch.equal(fixed.for_chapter(0), fixed.for_chapter(c)) for c in range(1, 5))
    random = Negatives("random", LABELS, 10, seed=1)
    assert (random.for_chapter(0) != random.for_chapter(1)).float().mean() > 0.8
    assert torch.equal(random.for_chapter(2), Negatives("random", LABELS, 10, seed=1).for_chapter(2))


def test_softmax_head_learns_on_fixed_features():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 20, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    head = heads.SoftmaxHead(heads.zero_linear(20, 4), lr=0.05)
    first = head.train_step(x, y)
    for _ in range(100):
        last = head.train_step(x, y)
    assert last < 0.3 < first
    assert (head.logits(x).argmax(1) == y).float().mean() > 0.9


def test_features_concatenate_the_scoring_layers_for_the_neutral_label():
    linears = [torch.nn.Linear(30, 16), torch.nn.Linear(16, 8), torch.nn.Linear(8, 4)]
    x = torch.rand(5, 30)
    out = heads.features(linears, x, 10, score_layers=(1, 2))
    assert out.shape == (5, 12)
    same_label_slots = x.clone()
    same_label_slots[:, :10] = 0.9  # the neutral label overwrites whatever label slots held
    assert torch.allclose(heads.features(linears, same_label_slots, 10, (1, 2)), out)


def test_perf_opt_layer_learns_and_accuracy_reports_last_and_all_heads():
    torch.manual_seed(0)
    x = torch.rand(300, 40)
    y = (x[:, 10:20].sum(1) > x[:, 20:30].sum(1)).long()
    layers = [heads.PerfOptLayer(torch.nn.Linear(40, 32), torch.nn.Linear(32, 2), lr=0.01),
              heads.PerfOptLayer(torch.nn.Linear(32, 32), torch.nn.Linear(32, 2), lr=0.01)]
    first = layers[0].train_step(x, y)
    for _ in range(200):
        h = x / x.pow(2).mean(1, keepdim=True).sqrt()
        for layer in layers:
            layer.train_step(h, y)
            with torch.no_grad():
                h = layer.forward(h)
    assert layers[0].train_step(x, y) < first
    last, every = heads.perf_opt_accuracy(layers, x, y, num_classes=2)
    assert 0.8 < last <= 1 and 0.8 < every <= 1


def test_iid_shards_split_every_row_once_and_one_shard_is_the_data_set():
    shards = shard_rows(LABELS, 4, "iid", 2, seed=0)
    assert sorted(torch.cat(shards).tolist()) == list(range(len(LABELS)))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert torch.equal(shard_rows(LABELS, 1, "iid", 2, seed=0)[0], torch.arange(len(LABELS)))


@pytest.mark.parametrize("shards,per_shard,most", [(5, 2, 2), (10, 2, 2), (4, 2, 3), (2, 2, 5), (3, 4, 4), (1, 2, 10)])
def test_label_skew_shards_see_few_classes(shards, per_shard, most):
    # at most M classes a shard, or ceil(10 / shards) when fewer shards than that could not cover the classes
    parts = shard_rows(LABELS, shards, "label-skew", per_shard, seed=0)
    assert sorted(torch.cat(parts).tolist()) == list(range(len(LABELS)))
    seen = [len(set(LABELS[rows].tolist())) for rows in parts]
    assert max(seen) <= most and min(seen) >= 1, seen
    sizes = [len(rows) for rows in parts]  # about equal work for every rank
    assert max(sizes) <= 1.25 * len(LABELS) / shards, sizes


def test_clock_columns_add_up_to_wall_and_chapters_sum_epochs(monkeypatch):
    # a clock the test moves, so the accounting is checked exactly on any CPU and load
    from types import SimpleNamespace
    from pffbench.instrument import timer
    now = [100.0]
    monkeypatch.setattr(timer, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    clock = GapTimer(epochs=4)
    for epoch, category in [(0, "data"), (0, "compute"), (1, "compute"), (1, "send_wait"), (3, "recv_wait")]:
        now[0] += 0.02  # no block's time: the next block's epoch idles
        with clock(category, epoch):
            now[0] += 0.005
    table = clock.table()
    assert table.shape == (4, len(COLUMNS))
    idle, wall = table[:, COLUMNS.index("idle")], table[:, -1]
    assert idle.tolist() == pytest.approx([0.04, 0.04, 0.0, 0.02])  # the gaps, where they fell
    assert table[0, COLUMNS.index("compute")] == pytest.approx(0.005)
    assert wall.sum() == pytest.approx(now[0] - 100.0)  # every second since the clock started, once
    chapters = chapter_table(clock.table(), per_chapter=2)
    assert chapters.shape == (3, 2)
    assert chapters[0, 0] == pytest.approx(table[:2, [0, 1]].sum())  # compute = compute + data


@pytest.mark.parametrize("argv,size,needle", [
    (["--variant", "single-layer", "--layers", "8,8,8"], 2, "single-layer needs one rank per layer (3)"),
    (["--variant", "all-layers", "--epochs", "10", "--splits", "3"], None, "--splits 3 does not divide --epochs 10"),
    (["--variant", "all-layers", "--epochs", "2"], 4, "4 ranks but only 2 chapters"),
    (["--variant", "federated", "--shards", "2"], 4, "4 ranks but only 2 --shards"),
    (["--neg", "adaptive"], None, "need a PFF --variant"),
    (["--variant", "perf-opt", "--eval-every", "1"], None, "--eval-every works with the pipeline variant only"),
    (["--preset", "nope"], None, "unknown --preset"),
    (["--variant", "all-layers", "--softmax-lr", "0"], None, "--softmax-lr must be positive"),
])
def test_impossible_combinations_are_one_line_usage_errors(argv, size, needle):
    with pytest.raises(UsageError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        validate(parse_config(argv), size)


def test_more_ranks_than_layers_is_fine_outside_the_pipeline():
    validate(parse_config(["--variant", "all-layers", "--layers", "8,8", "--epochs", "4"]), 4)
    validate(parse_config(["--variant", "single-layer", "--layers", "8,8"]), 1)


def test_presets_set_the_papers_settings_and_flags_override_them():
    assert len(PRESETS) >= 20
    config = parse_config(["--preset", "mnist-goodness-adaptive-all-layers"])
    assert (config.variant, config.neg, config.classifier) == ("all-layers", "adaptive", "goodness")
    assert config.layers == (2000,) * 4 and config.epochs == 100 and config.splits == 100
    assert config.score_layers == (1, 2, 3) and config.lr == 0.01 and config.softmax_lr == 1e-4
    config = parse_config(["--preset", "cifar10-perf-opt", "--epochs", "4", "--splits", "2"])
    assert (config.dataset, config.variant, config.epochs, config.splits) == ("cifar10", "perf-opt", 4, 2)
    for name, preset in PRESETS.items():
        validate(parse_config(["--preset", name]), preset.ranks)
