"""The fused head inside a CUDA graph: forward and backward capture without
a host synchronisation, and replays on new inputs give eager's numbers bit
for bit (GPU only: the interpreter has no graphs)."""

import pytest
import torch

import msds
from helpers import relu_features, require_triton

require_triton()

from msds.kernels.gram_ssim import Config, gram_ssim_backward, gram_ssim_forward  # noqa: E402

SIZES = [(16, 16), (8, 8), (4, 4)]


def maps(rng, device, batch=4, channels=128):
    fxs = [relu_features((batch, channels, h, w), rng, torch.float32).to(device) for h, w in SIZES]
    fys = [relu_features((batch, channels, h, w), rng, torch.float32).to(device) for h, w in SIZES]
    return fxs, fys


def capture(step, inputs):
    """Warm up `step` on a side stream (compiling the kernels), capture it, return (graph, outputs)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step(*inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step(*inputs)
    return graph, outputs


def replay_matches_eager(step, inputs, fresh):
    graph, outputs = capture(step, inputs)
    for static, new in zip(inputs, fresh, strict=True):
        for s, n in zip(static, new, strict=True):
            s.copy_(n)
    graph.replay()
    torch.cuda.synchronize()
    expected = step(*fresh)
    return all(torch.equal(a, b) for a, b in zip(outputs, expected, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("config", [None, Config(64, 64, 4, 1, tile_order=True, small=64),
                                    Config(64, 16, 8, 1, tile_order=True, resident=64, both=True)],
                         ids=["rule", "small-levels", "resident-both"])
def test_kernels_replay_in_a_cuda_graph(config, rng, device):
    if device.type != "cuda":
        pytest.skip("MSDS_TEST_DEVICE names no CUDA device")
    grad = torch.rand(4, len(SIZES), generator=rng).to(device)

    def step(xs, ys):
        scores = gram_ssim_forward(xs, ys, 1e-6, config=config)
        return [scores, *gram_ssim_backward(grad, xs, ys, 1e-6, config=config, both=True)]

    assert replay_matches_eager(step, maps(rng, device), maps(rng, device))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_head_with_autograd_replays_in_a_cuda_graph(rng, device):
    # The public head through its custom ops, forward and autograd backward.
    if device.type != "cuda":
        pytest.skip("MSDS_TEST_DEVICE names no CUDA device")

    def step(xs, ys):
        leaves = [x.detach().requires_grad_() for x in xs]
        scores = msds.multiscale_gram_ssim(leaves, ys, backend="triton")
        return [scores.detach(), *torch.autograd.grad(scores.sum(), leaves)]

    assert replay_matches_eager(step, maps(rng, device), maps(rng, device))
