"""The backward kernel against float64 autograd of the reference (Triton interpreter)."""

import pytest
import torch

import msds
from helpers import UNIT_ROUNDOFF, relative_error, relu_features, require_triton, rounding_rtol, tile_condition
from msds.metric import reference

require_triton()

ROWS = [
    (1, 4, [(1, 1)]),
    (3, 12, [(5, 5), (2, 2), (1, 1)]),
    (2, 20, [(4, 15)]),
    (1, 36, [(3, 3), (1, 1)]),
    (2, 64, [(7, 9), (3, 4), (1, 2), (1, 1), (1, 1)]),
    (1, 100, [(2, 5)]),
    (1, 8, [(3, 3), (2, 2), (1, 1), (1, 1), (1, 1), (1, 1)]),
    (1, 512, [(2, 2), (1, 1)]),
]
IDS = [f"B{b}-C{c}-L{len(s)}" for b, c, s in ROWS]
# The C = 512 row (the trunk's width) in the full tier; the smaller rows take the same code paths.
CASES = [pytest.param(*row, id=name, marks=pytest.mark.full if row[1] == 512 else ()) for row, name in zip(ROWS, IDS)]


def leaves(batch, channels, sizes, generator, device, dtype=torch.float64, grad=(True, True)):
    fxs = [relu_features((batch, channels, h, w), generator).to(dtype) for h, w in sizes]
    fys = [(f.double() + relu_features(f.shape, generator)).to(dtype) for f in fxs]
    return ([f.to(device).requires_grad_(grad[0]) for f in fxs],
            [f.to(device).requires_grad_(grad[1]) for f in fys])


def gradients(head, fxs, fys, weights):
    scores = head(fxs, fys)
    inputs = [f for f in fxs + fys if f.requires_grad]
    return torch.autograd.grad((scores * weights.to(scores.dtype)).sum(), inputs)


def kernel(fxs, fys):
    return msds.multiscale_gram_ssim(fxs, fys, backend="triton")


def exact(fxs, fys):
    """Reference autograd in float64 on the same (possibly rounded) values."""
    return reference.multiscale_scores(fxs, fys, 1e-6)


@pytest.mark.parametrize("batch,channels,sizes", CASES)
def test_float64_gradients_match_reference_autograd(batch, channels, sizes, rng, device):
    fxs, fys = leaves(batch, channels, sizes, rng, device)
    weights = torch.rand(batch, len(sizes), generator=rng, dtype=torch.float64).to(device)
    got = gradients(kernel, fxs, fys, weights)
    expected = gradients(exact, fxs, fys, weights)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == torch.float64 and g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12 * e.abs().max().item())


# Measured under the interpreter, three seeds per row: at most 1.7e-6 relative
# (one tile, C = 4), against bounds of 1.2e-5 to 6e-5.
@pytest.mark.parametrize("batch,channels,sizes", ROWS[:6], ids=IDS[:6])
def test_float32_gradients_within_rounding(batch, channels, sizes, rng, device):
    fxs, fys = leaves(batch, channels, sizes, rng, device, torch.float32)
    weights = torch.rand(batch, len(sizes), generator=rng).to(device)
    assert_within_rounding(fxs, fys, weights)


def assert_within_rounding(fxs, fys, weights, returned_in=torch.float32):
    """Kernel gradients within rounding of float64 autograd on the same values.

    The bound (tests/helpers.py): Gram entries sum K products, tiles 16
    entries, dScore/dF sums C; the tile statistics amplify those errors by
    their condition; a gradient returned in 16 bits is rounded once more.
    """
    truth = gradients(exact, [f.detach().double().requires_grad_() for f in fxs],
                      [f.detach().double().requires_grad_() for f in fys], weights)
    got = gradients(kernel, fxs, fys, weights)
    positions = max(f[0, 0].numel() for f in fxs + fys)
    bound = rounding_rtol(positions + 16 + fxs[0].shape[1]) * tile_condition(fxs, fys)
    if returned_in != torch.float32:
        bound += UNIT_ROUNDOFF[returned_in]
    for g, t in zip(got, truth, strict=True):
        assert g.dtype == returned_in
        error = relative_error(g, t)
        assert error <= bound, (error, bound)


def test_gradient_for_one_input_only(rng, device):
    fxs, fys = leaves(2, 12, [(3, 3), (1, 2)], rng, device, grad=(True, False))
    kernel(fxs, fys).sum().backward()
    assert all(f.grad is not None for f in fxs) and all(f.grad is None for f in fys)
    fresh = [f.detach().requires_grad_() for f in fxs]
    expected = torch.autograd.grad(exact(fresh, fys).sum(), fresh)
    for f, e in zip(fxs, expected):
        torch.testing.assert_close(f.grad, e, rtol=1e-9, atol=1e-14)
    gxs, gys = leaves(2, 12, [(3, 3)], rng, device, grad=(False, True))
    kernel(gxs, gys).sum().backward()
    assert gxs[0].grad is None and gys[0].grad is not None


def test_gradients_are_bitwise_deterministic(rng, device):
    fxs, fys = leaves(2, 36, [(5, 4), (2, 2)], rng, device, torch.float32)
    first = gradients(kernel, fxs, fys, torch.ones(2, 2, device=device))
    second = gradients(kernel, fxs, fys, torch.ones(2, 2, device=device))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_low_precision_gradients_come_back_in_the_input_dtype(rng, device):
    fxs, fys = leaves(1, 16, [(4, 4)], rng, device, torch.float16)
    grads = gradients(kernel, fxs, fys, torch.ones(1, 1, device=device))
    assert all(g.dtype == torch.float16 for g in grads)


@pytest.mark.full
def test_gradcheck_through_the_kernels(rng, device):
    fxs, fys = leaves(1, 8, [(2, 2), (1, 1)], rng, device)
    assert torch.autograd.gradcheck(lambda a0, a1, b0, b1: kernel([a0, a1], [b0, b1]), (*fxs, *fys))


def test_opcheck_of_the_custom_op(rng, device):
    from msds.kernels import ops

    fxs, fys = leaves(2, 12, [(3, 2), (1, 1)], rng, device)
    torch.library.opcheck(ops.gram_ssim_forward_op, (fxs, fys, 1e-6, "tf32x3"))
    grad = torch.rand(2, 2, generator=rng, dtype=torch.float64).to(device)
    detached = ([f.detach() for f in fxs], [f.detach() for f in fys])
    torch.library.opcheck(ops.gram_ssim_backward_op, (grad, *detached, 1e-6, "tf32x3", True, True))


def test_compiles_into_one_graph(rng, device):
    # The custom ops keep torch.compile from breaking the graph; the
    # aot_eager backend traces forward and backward without generating code.
    fxs, fys = leaves(1, 8, [(2, 2), (1, 1)], rng, device, grad=(True, False))

    def loss(a0, a1, b0, b1):
        return (1 - msds.multiscale_gram_ssim([a0, a1], [b0, b1], backend="triton")).mean()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    value = compiled(*fxs, *fys)
    value.backward()
    fresh = [f.detach().requires_grad_() for f in fxs]
    expected = torch.autograd.grad(loss(*fresh, *fys), fresh)
    torch.testing.assert_close(value, loss(*fxs, *fys).detach())
    for f, e in zip(fxs, expected):
        torch.testing.assert_close(f.grad, e)


@pytest.mark.full
def test_loss_through_the_trunk_matches_reference_gradients(rng, device):
    x = torch.rand(2, 3, 32, 32, generator=rng, dtype=torch.float64).to(device)
    y = (x + 0.2 * torch.rand(x.shape, generator=rng, dtype=torch.float64).to(device)).clamp(0, 1)
    grads = []
    for backend in ("triton", "reference"):
        loss_fn = msds.MSDS(levels=2, weights=None, as_loss=True, backend=backend).double().to(device)
        pred = x.clone().requires_grad_()
        loss_fn(pred, y).backward()
        grads.append(pred.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-8, atol=1e-14)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 dots need a GPU (the interpreter cannot run them)")
def test_bfloat16_gradients_on_gpu(rng):
    fxs, fys = leaves(2, 64, [(8, 8), (4, 4), (2, 2)], rng, "cuda", torch.bfloat16)
    weights = torch.rand(2, 3, generator=rng).cuda()
    # bf16 features are exact in fp32, the products fp32-accurate (tf32x3):
    # the gradient is rounded to bf16 once at the end (2**-8 relative).
    assert_within_rounding(fxs, fys, weights, returned_in=torch.bfloat16)
