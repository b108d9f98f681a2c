"""The CPU fast path's Winograd layers behave as the layers themselves do:
after weight edits of every kind, with hooks, under every autograd mode,
across dtype and device changes, with any number of threads. Each case
compares with the plain path (the layers called as modules), with float64
`F.conv2d`, or with fresh filters made from the weights as they are."""

import copy
import weakref

import pytest
import torch

import msds
from helpers import (record_branches, relative_error, replay_branches, rounding_rtol, score_atol, trunk_terms,
                     winograd_growth)
from msds.trunk import winograd
from msds.trunk.threads import LOAD

SIZE = 32  # every wide layer of the full trunk runs at least 2 x 2


@pytest.fixture
def trunk(monkeypatch):
    """A short trunk, for speed: conv1_1 and, after a max-pool, three 3x3
    convolutions of 128 channels, the last two wide enough for Winograd."""
    monkeypatch.setattr(msds.trunk.vgg16, "LAYOUT", [64, "M", 128, 128, 128])
    return msds.VGG16Trunk(None)


@pytest.fixture
def x(rng):
    return torch.rand(2, 3, SIZE, SIZE, generator=rng).contiguous(memory_format=torch.channels_last)


def fast(trunk, images):
    return trunk(images, None, True)


def plain(trunk, images):
    return trunk(images, None, False)


def wide_indices(trunk):
    return [i for i, m in enumerate(trunk.features)
            if isinstance(m, torch.nn.Conv2d) and m.in_channels >= winograd.MIN_CHANNELS]


def exact(trunk, images):
    """The trunk's output in float64 by torch's direct convolutions, from a copy of its weights as they are."""
    return plain(copy.deepcopy(trunk).double(), images.double())


def within_winograd_rounding(trunk, got, images):
    # Every output sums the trunk's 9 * C_in terms per layer, through
    # transforms that multiply their rounding (tests/helpers.py).
    terms = sum(9 * m.in_channels for m in trunk.features if isinstance(m, torch.nn.Conv2d))
    return relative_error(got, exact(trunk, images)) <= winograd_growth() * rounding_rtol(terms)


def test_follows_weight_edits_that_autograd_cannot_see(trunk, x, rng):
    first_wide = trunk.features[wide_indices(trunk)[-2]]
    fast(trunk, x)  # the filters are made
    edits = {
        "data.mul_": lambda w: w.data.mul_(-1),
        "data.copy_ of the filters in another order": lambda w: w.data.copy_(w.data.flip(0)),
        "data.copy_ of new weights": lambda w: w.data.copy_(torch.randn(w.shape, generator=rng) * w.std()),
        "one weight, one ulp": lambda w: w.data.view(-1)[7].copy_(torch.nextafter(w.data.view(-1)[7], torch.tensor(1.0))),
    }
    for name, edit in edits.items():
        edit(first_wide.weight)
        got = fast(trunk, x)
        # Exactly what filters made afresh from the edited weights give.
        assert torch.equal(got, fast(copy.deepcopy(trunk), x)), name
        assert within_winograd_rounding(trunk, got, x), name


def test_follows_a_round_trip_through_half_precision(rng):
    # A round trip leaves a parameter where it was, in new storage at version
    # 0, and a freed address often comes back (in about 1 trial of 10 here):
    # an address-and-version stamp then matches weights that are no longer
    # the ones the filters were made from. One small layer, many trials,
    # each from unrounded weights at version 0.
    x = torch.rand(1, winograd.MIN_CHANNELS, 8, 8, generator=rng)
    for trial in range(40):
        layer = torch.nn.Conv2d(winograd.MIN_CHANNELS, 2, 3, padding=1).requires_grad_(False).double().float()
        transforms = winograd.FilterTransforms()
        winograd.conv3x3(x, layer, transforms)
        layer.half().float()
        assert torch.equal(winograd.conv3x3(x, layer, transforms),
                           winograd.conv3x3(x, layer, winograd.FilterTransforms())), trial


def test_follows_weight_edits_between_forward_and_backward(trunk, x):
    # Through .data autograd does not see the edit, and torch's convolution
    # takes the new weights in the backward: so must Winograd.
    grads = []
    for run in (fast, plain):
        model = copy.deepcopy(trunk)
        run(model, x.clone().requires_grad_()).sum().backward()  # the backward's filters are made
        leaf = x.clone().requires_grad_()
        out = run(model, leaf)
        for i in wide_indices(model):
            model.features[i].weight.data.mul_(-0.5)
        out.sum().backward()
        grads.append(leaf.grad)
    terms = 2 * sum(9 * (m.in_channels + m.out_channels) for m in trunk.features if isinstance(m, torch.nn.Conv2d))
    assert relative_error(*grads) <= winograd_growth() * rounding_rtol(terms)


def test_refuses_weights_changed_in_place_before_the_backward_as_torch_does(trunk, x):
    for run in (plain, fast):
        model = copy.deepcopy(trunk)
        out = run(model, x.clone().requires_grad_())
        with torch.no_grad():
            model.features[wide_indices(model)[0]].weight.mul_(2)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.sum().backward()


def zero_output(module, args, output):
    return torch.zeros_like(output)


def test_hooks_on_the_layer_and_global_ones_run(trunk, x):
    first_wide = trunk.features[wide_indices(trunk)[-2]]  # the first of the short trunk's two wide layers
    # Zeroing its output zeroes the trunk's (the random trunk's biases are zero).
    zeroing = {
        "forward hook": lambda: first_wide.register_forward_hook(zero_output),
        "global forward hook": lambda: torch.nn.modules.module.register_module_forward_hook(
            lambda module, args, output: zero_output(module, args, output) if module is first_wide else None),
    }
    for name, register in zeroing.items():
        handle = register()
        try:
            assert torch.equal(fast(trunk, x), plain(trunk, x)), name
            assert plain(trunk, x).abs().max() == 0, name
        finally:
            handle.remove()
    # Halving its input halves the trunk's output (linear but for ReLUs and max-pools).
    expected = 0.5 * exact(trunk, x)
    handle = first_wide.register_forward_pre_hook(lambda module, args: (args[0] * 0.5,))
    try:
        got = fast(trunk, x)
    finally:
        handle.remove()
    terms = sum(9 * m.in_channels for m in trunk.features if isinstance(m, torch.nn.Conv2d))
    assert relative_error(got, expected) <= winograd_growth() * rounding_rtol(terms)


def test_a_trunk_built_in_inference_mode(monkeypatch, x):
    monkeypatch.setattr(msds.trunk.vgg16, "LAYOUT", [64, "M", 128, 128, 128])
    with torch.inference_mode():
        trunk = msds.VGG16Trunk(None)
    # Inference tensors: the layers run as modules, as on the plain path.
    with torch.no_grad():
        assert torch.equal(fast(trunk, x), plain(trunk, x))
    with torch.inference_mode():
        assert torch.equal(fast(trunk, x), plain(trunk, x))


def test_a_metric_built_in_inference_mode(x):
    with torch.inference_mode():
        inference = msds.MSDS(levels=1, weights=None)
    with torch.no_grad():
        scores = inference(x, x.flip(-1))
    # Against the same metric built outside inference mode (Winograd there).
    model = msds.MSDS(levels=1, weights=None)
    positions = (SIZE // 16) ** 2
    assert (scores - model(x, x.flip(-1))).abs().max().item() <= score_atol(trunk_terms(model) + positions)


def gradient_penalty_gradient(model, x, y):
    """The gradient of |d score / d x|^2 in x: a second-order gradient, as gradient penalties take."""
    leaf = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(leaf, y).sum(), leaf, create_graph=True)
    (second,) = torch.autograd.grad(grad.square().sum(), leaf)
    return second


def test_second_order_gradients(x):
    y = x.flip(-1)
    model = msds.MSDS(levels=1, weights=None)
    record_branches(model)
    got = gradient_penalty_gradient(model, x, y)
    # In float64 on the plain path, on the branches the float32 run took.
    replay_branches(model)
    model.fast = False
    expected = gradient_penalty_gradient(model.double(), x.double(), y.double())
    # The trunk's forward, its backward, and the backward's forward and
    # backward: each layer's terms, their rounding within Winograd's growth.
    terms = 2 * trunk_terms(model, backward=True)
    assert expected.abs().max() > 0
    assert relative_error(got, expected) <= winograd_growth() * rounding_rtol(terms)


def test_forward_mode_ad_and_torch_func(trunk, x, rng):
    tangent = torch.rand(x.shape, generator=rng)
    results = {}
    for run in (fast, plain):
        with torch.autograd.forward_ad.dual_level():
            out = run(trunk, torch.autograd.forward_ad.make_dual(x, tangent))
            jvp = torch.autograd.forward_ad.unpack_dual(out).tangent
        grad = torch.func.grad(lambda images: run(trunk, images).square().sum())(x)
        results[run] = (jvp, grad)
    # Where the fast path cannot take part it runs each layer as a module: as plain does.
    for got, expected in zip(results[fast], results[plain]):
        assert torch.equal(got, expected)


def test_filters_are_freed_with_dtype_and_device_changes(trunk, x):
    for change in (lambda t: t.double(), lambda t: t.half(), lambda t: t.to("meta"),
                   lambda t: t.clear_winograd_filters()):
        model = copy.deepcopy(trunk)
        fast(model, x)
        filters = [weakref.ref(model._winograd[i].forward()) for i in wide_indices(model)]
        change(model)
        assert all(f() is None for f in filters)


def test_the_rule_steps_aside_where_it_cannot_behave_as_the_layer(x):
    layer = torch.nn.Conv2d(winograd.MIN_CHANNELS, 8, 3, padding=1).requires_grad_(False)
    wide = torch.zeros(1, winograd.MIN_CHANNELS, 8, 8)
    assert winograd.applies(wide, layer)
    handle = layer.register_forward_hook(lambda *args: None)
    assert not winograd.applies(wide, layer)
    handle.remove()
    torch.nn.utils.parametrize.register_parametrization(layer, "weight", torch.nn.Identity())
    assert not winograd.applies(wide, layer)


def test_scores_and_gradients_do_not_depend_on_the_thread_count(rng, monkeypatch):
    # As on the plain path, bit for bit: torchrun runs each process with one
    # thread, a lone process takes all the cores, and msds eval promises
    # both the same file. Three images of 96 x 80 pixels, two levels, and
    # one image of 32 x 32: oneDNN's direct convolutions of one small image
    # split their sums by the thread count, so no wide layer may fall back
    # to them.
    x = torch.rand(3, 3, 96, 80, generator=rng)
    y = (x + 0.1 * torch.rand(x.shape, generator=rng)).clamp(0, 1)
    model = msds.MSDS(levels=2, weights=None, as_loss=True, reduction="none")
    # Each run on the count set, even where other processes keep cores busy (msds.trunk.threads).
    monkeypatch.setattr(LOAD, "enabled", False)
    default = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            leaf = x.clone().requires_grad_()
            scores = model.level_scores(leaf, y)
            scores.sum().backward()
            with torch.no_grad():
                single = model.level_scores(x[:1, :, :32, :32], y[:1, :, :32, :32])
            results.append((scores, leaf.grad, single))
    finally:
        torch.set_num_threads(default)
    for threads, result in zip((2, 3), results[1:]):
        assert all(torch.equal(got, expected) for got, expected in zip(result, results[0])), threads
