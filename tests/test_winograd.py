"""Winograd's F(4x4, 3x3) convolutions (msds.trunk.winograd) against torch's direct
convolution in float64, and where the fast path uses them."""

import pickle
from copy import deepcopy

import pytest
import torch
import torch.nn.functional as F

import msds
from helpers import relative_error, rounding_rtol, winograd_growth
from msds.trunk import winograd

# (images, in channels, out channels, height, width): sizes below, at and
# above one 4x4 block, primes, lengths that are no multiple of 4.
SHAPES = [(1, 3, 2, 1, 1), (2, 5, 3, 4, 4), (1, 4, 7, 5, 9), (3, 6, 4, 13, 7), (2, 8, 8, 33, 2), (1, 2, 5, 17, 23)]


def conv_layer(c_in, c_out, generator, dtype=torch.float64) -> torch.nn.Conv2d:
    layer = torch.nn.Conv2d(c_in, c_out, 3, padding=1).to(dtype).requires_grad_(False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator, dtype=dtype) / (9 * c_in) ** 0.5)
        layer.bias.copy_(torch.randn(c_out, generator=generator, dtype=dtype) * 0.1)
    return layer


def direct(x, layer):
    """The convolution in float64, by torch's own direct algorithm."""
    return F.conv2d(x.double(), layer.weight.double(), layer.bias.double(), padding=1)


def winograd_and_direct_gradients(x, layer, dtype):
    """Output and input gradient by Winograd in `dtype` and directly in float64, for one random output gradient."""
    generator = torch.Generator().manual_seed(1)
    grad = torch.randn(x.shape[0], layer.out_channels, *x.shape[2:], generator=generator, dtype=torch.float64)
    leaf = x.to(dtype).clone().requires_grad_()
    out = winograd.conv3x3(leaf, layer.to(dtype), winograd.FilterTransforms())
    out.backward(grad.to(dtype))
    exact_leaf = x.double().clone().requires_grad_()
    exact = F.conv2d(exact_leaf, layer.weight.double(), layer.bias.double(), padding=1)
    exact.backward(grad)
    return (out, exact), (leaf.grad, exact_leaf.grad)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("chunk", [winograd.CHUNK_ELEMENTS, 1, 40])
def test_in_float64_it_is_the_convolution(shape, chunk, rng, monkeypatch):
    # Small chunks split the work into single tiles, bands of block rows and
    # groups of images, with a short last chunk: every path of the gather.
    monkeypatch.setattr(winograd, "CHUNK_ELEMENTS", chunk)
    n, c_in, c_out, h, w = shape
    layer = conv_layer(c_in, c_out, rng)
    x = torch.randn(n, c_in, h, w, generator=rng, dtype=torch.float64)
    (out, exact), (grad, exact_grad) = winograd_and_direct_gradients(x, layer, torch.float64)
    # Exact arithmetic would agree exactly; float64 rounding, even amplified
    # by the transforms' coefficients, stays far below 1e-12.
    assert out.shape == exact.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(out, exact) <= 1e-12
    assert relative_error(grad, exact_grad) <= 1e-12


@pytest.mark.parametrize("n,h,w", [(1, 2, 4), (1, 6, 8), (2, 2, 4), (1, 3, 3)])
def test_outputs_take_the_trunks_in_place_relu(n, h, w, rng):
    # The trunk's ReLUs work in place; autograd refuses that on a view made
    # inside a Function, which a crop of whole rows of one image would be.
    layer = conv_layer(3, 2, rng)
    x = torch.randn(n, 3, h, w, generator=rng, dtype=torch.float64, requires_grad=True)
    winograd.conv3x3(x, layer, winograd.FilterTransforms()).relu_().sum().backward()
    exact = x.detach().clone().requires_grad_()
    F.conv2d(exact, layer.weight, layer.bias, padding=1).relu().sum().backward()
    assert relative_error(x.grad, exact.grad) <= 1e-12


def test_gradcheck(rng):
    layer = conv_layer(3, 2, rng)
    x = torch.randn(2, 3, 6, 5, generator=rng, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: winograd.conv3x3(t, layer, winograd.FilterTransforms()), (x,))


@pytest.mark.parametrize("shape", [(2, 128, 128, 24, 20), (1, 256, 512, 9, 14), (3, 512, 512, 4, 4)])
def test_float32_within_rounding_of_float64(shape, rng):
    n, c_in, c_out, h, w = shape
    layer = conv_layer(c_in, c_out, rng)
    x = torch.randn(n, c_in, h, w, generator=rng, dtype=torch.float64).relu()
    (out, exact), (grad, exact_grad) = winograd_and_direct_gradients(x, layer, torch.float32)
    assert out.dtype == torch.float32
    # Each output sums 9 * C_in terms (9 * C_out for the input gradient),
    # through transforms that multiply their rounding (tests/helpers.py).
    assert relative_error(out, exact) <= winograd_growth() * rounding_rtol(9 * c_in)
    assert relative_error(grad, exact_grad) <= winograd_growth() * rounding_rtol(9 * c_out)


def test_filters_follow_changes_to_the_weights(rng):
    layer = conv_layer(4, 3, rng)
    transforms = winograd.FilterTransforms()
    x = torch.randn(1, 4, 8, 8, generator=rng, dtype=torch.float64)
    winograd.conv3x3(x, layer, transforms)
    with torch.no_grad():  # in place, as load_state_dict does
        layer.weight.mul_(-2)
    assert relative_error(winograd.conv3x3(x, layer, transforms), direct(x, layer)) <= 1e-12
    layer.weight = torch.nn.Parameter(torch.randn(3, 4, 3, 3, generator=rng, dtype=torch.float64), requires_grad=False)
    assert relative_error(winograd.conv3x3(x, layer, transforms), direct(x, layer)) <= 1e-12


def test_copies_remake_the_filters(rng):
    layer = conv_layer(4, 3, rng)
    transforms = winograd.FilterTransforms()
    x = torch.randn(1, 4, 8, 8, generator=rng, dtype=torch.float64)
    winograd.conv3x3(x, layer, transforms)
    for copy in (pickle.loads(pickle.dumps(transforms)), deepcopy(transforms)):
        assert copy._forward is None and copy._source is None
        assert relative_error(winograd.conv3x3(x, layer, copy), direct(x, layer)) <= 1e-12


def wide_layer(**kwargs) -> torch.nn.Conv2d:
    return torch.nn.Conv2d(winograd.MIN_CHANNELS, 8, 3, **{"padding": 1, **kwargs}).requires_grad_(False)


def test_applies_to_wide_frozen_float32_convolutions_on_the_cpu():
    x = torch.zeros(1, winograd.MIN_CHANNELS, 8, 8)
    assert winograd.applies(x, wide_layer())
    narrow = torch.nn.Conv2d(winograd.MIN_CHANNELS - 1, 8, 3, padding=1).requires_grad_(False)
    trainable = wide_layer().requires_grad_(True)
    refused = {
        "narrow": (x[:, 1:], narrow),
        "float64": (x.double(), wide_layer().double()),
        "weights that want a gradient": (x, trainable),
        "stride 2": (x, wide_layer(stride=2)),
        "no padding": (x, wide_layer(padding=0)),
        "a max-pool": (x, torch.nn.MaxPool2d(2)),
    }
    for name, (tensor, layer) in refused.items():
        assert not winograd.applies(tensor, layer), name
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not winograd.applies(x, wide_layer())


def count_winograd_calls(monkeypatch):
    calls = []
    original = winograd.convolve

    def counting(x, u, bias):
        calls.append(x.shape[1])
        return original(x, u, bias)

    monkeypatch.setattr(winograd, "convolve", counting)
    return calls


def test_the_cpu_fast_path_runs_the_wide_layers_by_winograd(rng, monkeypatch):
    calls = count_winograd_calls(monkeypatch)
    x = torch.rand(2, 3, 32, 32, generator=rng)
    wide = [m for m in msds.VGG16Trunk(None).features
            if isinstance(m, torch.nn.Conv2d) and m.in_channels >= winograd.MIN_CHANNELS]
    model = msds.DeepSSIM(weights=None, as_loss=True)
    leaf = x.clone().requires_grad_()
    model(leaf, x.flip(-1)).backward()
    # The prediction's pass and the target's (their gradient needs differ),
    # then the input gradient of each wide layer, last first.
    forward = [m.in_channels for m in wide]
    assert calls == forward + forward + [m.out_channels for m in reversed(wide)]
    calls.clear()
    for options in ({"fast": False}, {"trunk_dtype": torch.bfloat16}):
        msds.DeepSSIM(weights=None, **options)(x, x.flip(-1))
    msds.DeepSSIM(weights=None).double()(x.double(), x.flip(-1).double())
    assert calls == []
