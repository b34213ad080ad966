"""The FF math on its own: no MPI."""
import math

import pytest
import torch

from pffbench import ff
from pffbench.core.partition import balanced_partition, layer_costs


def test_embed_labels_writes_one_hot_and_keeps_the_rest():
    x = torch.rand(4, 20)
    out = ff.embed_labels(x, torch.tensor([0, 3, 9, 3]), 10)
    assert torch.equal(out[:, 10:], x[:, 10:])
    assert torch.equal(out[:, :10].argmax(1), torch.tensor([0, 3, 9, 3]))
    assert torch.equal(out[:, :10].sum(1), torch.ones(4))
    assert not torch.equal(out, x)  # a copy, input untouched
    neutral = ff.embed_labels(x, None, 10)
    assert torch.allclose(neutral[:, :10], torch.full((4, 10), 0.1))


def test_normalize_gives_unit_rms_and_keeps_direction():
    h = torch.rand(5, 30) * 7
    n = ff.normalize(h)
    assert torch.allclose(n.pow(2).mean(1), torch.ones(5), atol=1e-5)
    assert torch.allclose(torch.nn.functional.cosine_similarity(n, h), torch.ones(5), atol=1e-6)


def test_goodness_is_mean_square():
    h = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(ff.goodness(h), torch.tensor([14 / 3, 0.0]))


def test_loss_matches_the_formula_and_prefers_separated_goodness():
    g = torch.tensor([1.5, 0.5, 0.2, 2.0])  # two positive, two negative
    theta, k = 1.0, 3.0
    sp = lambda z: math.log1p(math.exp(z))  # noqa: E731
    expected = (sp(k * (theta - 1.5)) + sp(k * (theta - 0.5)) + sp(k * (0.2 - theta)) + sp(k * (2.0 - theta))) / 2
    assert ff.ff_loss(g, 2, theta, k).item() == pytest.approx(expected, rel=1e-6)
    good = ff.ff_loss(torch.tensor([3.0, 3.0, 0.0, 0.0]), 2, theta, k)
    bad = ff.ff_loss(torch.tensor([0.0, 0.0, 3.0, 3.0]), 2, theta, k)
    assert good < 0.1 < bad


def test_wrong_labels_are_never_the_true_label_and_cover_the_rest():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (5000,), generator=g)
    wrong = ff.random_wrong_labels(labels, 10, g)
    assert not (wrong == labels).any()
    assert set(wrong[labels == 4].tolist()) == set(range(10)) - {4}


def test_first_layer_inputs_are_the_normalized_embedded_pairs():
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(300, 50, generator=generator)
    x[7] = 0.0  # an empty image: its RMS comes from the label alone
    y = torch.randint(0, 10, (300,), generator=generator)
    rows = torch.tensor([7, 0, 299, 42, 42, 5, 6, 100])
    wrong = ff.random_wrong_labels(y[rows], 10, generator)
    sizes = [2, 1, 1, 1, 2, 1]
    starts = [sum(sizes[:b]) for b in range(len(sizes))]
    inputs = ff.FirstLayerInputs(x, 10)
    # a chunk per minibatch; chunks of up to 3 rows ([0, 1], [2, 3], [4, 5]); one chunk for all
    for chunk_bytes in (1, 3 * 50 * 4, 1 << 20):
        epoch = inputs.epoch(rows, y[rows], wrong, sizes, chunk_bytes)
        assert len(epoch) == len(sizes)
        for b in [3, 0, 1, 2, 4, 5, 5, 2]:  # out of order and repeated: chunks are gathered again
            part = slice(starts[b], starts[b] + sizes[b])
            r, right, neg = rows[part], y[rows][part], wrong[part]
            expected = ff.normalize(torch.cat((ff.embed_labels(x[r], right, 10), ff.embed_labels(x[r], neg, 10))))
            pair = epoch.batch(b).stacked()
            torch.testing.assert_close(pair, expected, rtol=1e-6, atol=1e-6)
            assert (pair[:len(r), :10].argmax(1) == right).all() and (pair[len(r):, :10].argmax(1) == neg).all()
        if chunk_bytes == 3 * 50 * 4:
            assert epoch.chunks == [[0, 1], [2, 3], [4, 5]]


def test_layer_step_lowers_its_loss_and_returns_pre_update_activity():
    torch.manual_seed(0)
    x = ff.normalize(torch.rand(64, 30))
    layer = ff.FFLayer(ff.make_linear(30, 40, seed=1, layer_index=0), lr=0.01, threshold=1.0, sharpness=5.0)
    before = torch.relu(layer.linear(x)).detach()
    out, first = layer.train_step(x, 32)
    assert torch.allclose(out, ff.normalize(before))  # the activity of the step's own forward pass
    for _ in range(50):
        _, last = layer.train_step(x, 32)
    assert last < 0.5 * first


def test_a_step_that_leaves_normalizing_to_the_next_rank_computes_the_same_bits():
    torch.manual_seed(0)
    x = ff.normalize(torch.rand(64, 30))
    layers = [ff.FFLayer(ff.make_linear(30, 40, seed=1, layer_index=0), 0.01, 1.0, 5.0) for _ in range(2)]
    out, norms = torch.full((64, 40), float("nan")), torch.full((64, 1), float("nan"))
    for _ in range(3):
        normalized, loss = layers[0].train_step(x, 32)
        raw, raw_loss = layers[1].train_step(x, 32, out=out, normalize=False, norm_out=norms)
        assert raw.data_ptr() == out.data_ptr()
        assert torch.equal(raw / norms, normalized) and torch.equal(raw_loss, loss)
        assert torch.equal(layers[0].linear.weight, layers[1].linear.weight)


@pytest.mark.parametrize("normalize", [True, False])
def test_pair_step_matches_the_plain_step(normalize):
    """The first layer's step that multiplies a positive's and its negative's
    shared inputs once trains like the plain step on the stacked rows, to
    float32 round-off, over many steps (Adam included)."""
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(400, 60, generator=generator)
    y = torch.randint(0, 10, (400,), generator=generator)
    inputs = ff.FirstLayerInputs(x, 10)
    order = torch.randperm(400, generator=generator)
    wrong = ff.random_wrong_labels(y[order], 10, generator)
    epoch = inputs.epoch(order, y[order], wrong, [32] * 12 + [16])
    plain, paired = (ff.FFLayer(ff.make_linear(60, 50, seed=1, layer_index=0), 0.01, 1.0, 5.0) for _ in range(2))
    for b, n in enumerate(epoch.sizes):
        pairs = epoch.batch(b)
        out, norms = torch.full((2 * n, 50), float("nan")), torch.full((2 * n, 1), float("nan"))
        want, want_loss = plain.train_step(pairs.stacked(), n, normalize=normalize)
        got, got_loss = paired.train_step_pairs(pairs, out=out, normalize=normalize, norm_out=norms)
        assert got.data_ptr() == out.data_ptr()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
        if not normalize:
            torch.testing.assert_close(got / norms, ff.normalize(want), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(paired.linear.weight, plain.linear.weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(paired.linear.bias, plain.linear.bias, rtol=1e-4, atol=1e-5)
    assert not torch.equal(paired.linear.weight, ff.make_linear(60, 50, seed=1, layer_index=0).weight)


def test_initial_weights_depend_only_on_seed_and_layer_index():
    a = ff.make_linear(10, 5, seed=3, layer_index=2)
    b = ff.make_linear(10, 5, seed=3, layer_index=2)
    c = ff.make_linear(10, 5, seed=3, layer_index=1)
    assert torch.equal(a.weight, b.weight)
    assert not torch.equal(a.weight, c.weight)


def test_goodness_classifier_picks_the_label_with_most_goodness():
    # One layer that lights up only for label 2 in slot 2: every input is classified as 2.
    linear = torch.nn.Linear(12, 1)
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[0, 2] = 5.0
        linear.bias.zero_()
    x = torch.rand(7, 12)
    assert torch.equal(ff.predict([linear], x, 10, (0,)), torch.full((7,), 2))


def test_cooldown_is_constant_then_linear_to_zero():
    assert ff.cooldown_lr(1.0, 0, 100, 0.5) == 1.0
    assert ff.cooldown_lr(1.0, 49, 100, 0.5) == 1.0
    assert ff.cooldown_lr(1.0, 75, 100, 0.5) == pytest.approx(0.5)
    assert ff.cooldown_lr(1.0, 99, 100, 0.5) == pytest.approx(0.02)
    assert ff.cooldown_lr(1.0, 99, 100, 1.0) == 1.0


@pytest.mark.parametrize("dims,parts,expected", [
    ([784, 2000, 2000, 2000, 2000], 4, [(0, 1), (1, 2), (2, 3), (3, 4)]),
    ([784, 2000, 2000, 2000, 2000], 2, [(0, 2), (2, 4)]),
    ([784, 2000, 2000, 2000, 2000], 1, [(0, 4)]),
    ([100, 4000, 10, 10, 10], 2, [(0, 1), (1, 4)]),
    ([10, 10, 10, 10, 4000], 2, [(0, 3), (3, 4)]),
])
def test_balanced_partition(dims, parts, expected):
    blocks = balanced_partition(layer_costs(dims), parts)
    assert [(b.start, b.stop) for b in blocks] == expected


def test_layer_costs_count_a_paired_first_layer_at_half_its_weights():
    assert layer_costs([784, 500, 500, 10]) == [196_000, 250_000, 5_000]
    assert layer_costs([784, 500, 500, 10], paired_first=False) == [392_000, 250_000, 5_000]
    # the cheaper first layer lets rank 0 take the second layer too (1.4 M, less than the 1.5 M rank 1 would get)
    assert balanced_partition(layer_costs([800, 1000, 1000, 500]), 2) == [range(0, 2), range(2, 3)]
    assert balanced_partition(layer_costs([800, 1000, 1000, 500], paired_first=False), 2) == [range(0, 1),
                                                                                            range(1, 3)]


def test_partition_minimises_the_slowest_block_exhaustively():
    import itertools
    costs = [5, 1, 9, 2, 2, 7, 3]
    for parts in range(1, len(costs) + 1):
        blocks = balanced_partition(costs, parts)
        assert [i for b in blocks for i in b] == list(range(len(costs)))
        best = min(max(sum(costs[a:b]) for a, b in zip((0,) + cuts, cuts + (len(costs),)))
                   for cuts in itertools.combinations(range(1, len(costs)), parts - 1))
        assert max(sum(costs[i] for i in b) for b in blocks) == best


def test_partition_rejects_more_parts_than_layers():
    with pytest.raises(ValueError):
        balanced_partition([1, 2], 3)


def test_manual_gradient_matches_autograd():
    torch.manual_seed(1)
    x = ff.normalize(torch.rand(40, 30))
    linear = ff.make_linear(30, 20, seed=2, layer_index=0)
    reference = torch.nn.Linear(30, 20)
    reference.load_state_dict(linear.state_dict())
    layer = ff.FFLayer(linear, lr=0.01, threshold=1.0, sharpness=7.0)
    layer.optimizer = torch.optim.SGD(linear.parameters(), lr=1.0)  # update = -gradient, to read it back
    _, loss = layer.train_step(x, 15)
    expected = ff.ff_loss(ff.goodness(torch.relu(reference(x))), 15, 1.0, 7.0)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(reference.weight.detach() - linear.weight, reference.weight.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(reference.bias.detach() - linear.bias, reference.bias.grad, rtol=1e-4, atol=1e-7)


def test_pff_first_layer_inputs_share_the_product_of_a_positive_and_its_negative():
    """FFKind never materializes a chapter's positive and negative first-layer
    inputs: its steps and its forward pass over the data set match those on
    the embedded rows."""
    from pffbench.core.config import Config
    from pffbench.schedules.pff import kinds
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(400, 60, generator=generator)
    y = torch.randint(0, 10, (400,), generator=generator)
    wrong = ff.random_wrong_labels(y, 10, generator)
    embedded = [ff.normalize(ff.embed_labels(x, labels, 10)) for labels in (y, wrong)]
    kind = kinds.FFKind(Config(layers=(30, 20)), [60, 30, 20], 10, torch.device("cpu"))
    xs = kind.inputs(x, y, wrong, 0)
    first, second, plain = kind.build(0), kind.build(1), kind.build(0)
    for rows in torch.randperm(400, generator=generator).split(32):
        loss = kind.step(first, xs, y, rows)
        want = plain.train_step(torch.cat([e[rows] for e in embedded]), len(rows), normalize=False)[1]
        torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first.linear.weight, plain.linear.weight, rtol=1e-4, atol=1e-5)
    for layer, inputs, plain_inputs in ((first, xs, embedded), (second, kind.forward(first, xs), None)):
        got = kind.forward(layer, inputs)  # the shared path, then the plain one
        for a, b in zip(got, plain_inputs or inputs):
            torch.testing.assert_close(a, ff.normalize(torch.relu(layer.linear(b))), rtol=1e-5, atol=1e-5)


def test_length_norm_layer_trains_like_a_plain_layer_on_unit_length_inputs():
    """--norm length: a layer given RMS-normalized rows with input_scale
    1/sqrt(d) (its weights made and stepped at that scale) computes the same
    activities, losses and (scaled) weights as a plain layer, with the plain
    init, given the same rows at unit length: what Hinton's paper and
    pytorch_forward_forward feed their layers."""
    torch.manual_seed(0)
    d = 30
    x = ff.normalize(torch.rand(64, d))
    scale = ff.input_scale("length", d)
    assert scale == pytest.approx(d ** -0.5) and ff.input_scale("rms", d) == 1.0
    plain = ff.FFLayer(ff.make_linear(d, 40, seed=1, layer_index=0), 0.01, 0.01, 200.0)
    scaled = ff.FFLayer(ff.make_linear(d, 40, seed=1, layer_index=0, scale=scale), 0.01, 0.01, 200.0, scale)
    torch.testing.assert_close(scaled.linear.weight, plain.linear.weight * scale)
    for step in range(40):
        if step == 20:  # the cooldown's rate changes keep the weights' step scaled
            plain.set_lr(0.004)
            scaled.set_lr(0.004)
        want, want_loss = plain.train_step(x * scale, 32, normalize=False)
        got, got_loss = scaled.train_step(x, 32, normalize=False)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got_loss, want_loss, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(scaled.linear.weight, plain.linear.weight * scale, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(scaled.linear.bias, plain.linear.bias, rtol=1e-4, atol=1e-6)
    assert not torch.equal(plain.linear.bias, torch.zeros(40))
    with pytest.raises(ValueError):
        ff.input_scale("l2", d)
