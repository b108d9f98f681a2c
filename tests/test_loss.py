"""MSDS as a drop-in training loss: DDP, autocast, channels_last, torch.compile."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import msds
from helpers import score_atol, subprocess_env

HERE = Path(__file__).parent


def pair(generator, shape=(2, 3, 32, 32)):
    target = torch.rand(shape, generator=generator)
    pred = (target + 0.2 * torch.rand(shape, generator=generator)).clamp(0, 1)
    return pred, target


@pytest.mark.full
def test_two_process_ddp_matches_one_process(tmp_path):
    env = subprocess_env()
    env.pop("OMP_NUM_THREADS", None)  # torchrun's default: one thread per process
    env["MSDS_FIXED_THREADS"] = "1"  # the default count even where other processes keep cores busy
    runs = {"ddp": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
            "single": [sys.executable], "single, one thread": [sys.executable]}
    results = {}
    for name, launcher in runs.items():
        out = tmp_path / f"{name}.pt"
        shares = [] if name == "ddp" else ["2"]
        run_env = {**env, "OMP_NUM_THREADS": "1"} if name == "single, one thread" else env
        run = subprocess.run(launcher + [str(HERE / "ddp_step.py"), str(out), *shares], env=run_env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        results[name] = torch.load(out)
    two, one = results["ddp"], results["single, one thread"]
    assert two["loss_unchanged"] and two["loss_no_grads"] and one["loss_unchanged"]
    # With each share in one thread on both sides, through the same
    # operations, and halving exact, DDP's gradients equal the single
    # process's bit for bit (the restorer's own weight gradients are torch's
    # sums over the batch and the pixels, which torch splits by the thread
    # count, so this comparison takes one thread on both sides).
    assert len(one["grads"]) == len(two["grads"]) == 2
    for step_one, step_two in zip(one["grads"], two["grads"]):
        assert step_one.keys() == step_two.keys()
        for name, grad in step_one.items():
            assert torch.equal(step_two[name], grad), name
    # The loss's own gradient does not depend on the thread count: the single
    # process with its default threads gives the first share's restored
    # images the same gradient, bit for bit, as DDP's one-thread rank 0.
    for single in (results["single"], one):
        assert torch.equal(two["loss_grads"][0], single["loss_grads"][0])


def test_autocast_keeps_fp32_statistics(rng):
    loss_fn = msds.MSDS(levels=2, weights=None, as_loss=True)
    pred, target = pair(rng)
    pred.requires_grad_()
    reference = loss_fn(pred, target)
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", dtype=dtype):
            scores = loss_fn.level_scores(pred, target)
            value = loss_fn(pred, target)
        assert scores.dtype == torch.float32 and value.dtype == torch.float32
        (grad,) = torch.autograd.grad(value, pred)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        # The trunk runs in 16 bits: the loss (1 - the score) moves by its
        # rounding only, within score_atol (tests/helpers.py: 12 roundings,
        # bf16 6.0e-3, fp16 7.5e-4). Measured on a 2-core EPYC over six
        # seeds: bf16 3.4e-4, fp16 4.7e-5, on losses of 0.02 to 0.03.
        assert abs(value.item() - reference.item()) <= score_atol(12, dtype), dtype


def test_channels_last_images_give_the_same_loss(rng):
    loss_fn = msds.MSDS(levels=2, weights=None, as_loss=True).double()
    pred, target = (t.double() for t in pair(rng))
    channels_last = [t.to(memory_format=torch.channels_last) for t in (pred, target)]
    torch.testing.assert_close(loss_fn(*channels_last), loss_fn(pred, target), rtol=1e-12, atol=1e-12)


def test_compiles_whole_with_fullgraph(rng):
    loss_fn = msds.MSDS(levels=2, weights=None, as_loss=True)
    pred, target = pair(rng)
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    x = pred.clone().requires_grad_()
    value = compiled(x, target)
    value.backward()
    y = pred.clone().requires_grad_()
    expected = loss_fn(y, target)
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(x.grad, y.grad)


def test_optimiser_given_the_loss_parameters_changes_nothing(rng):
    loss_fn = msds.MSDS(levels=1, weights=None, as_loss=True)
    before = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    optimiser = torch.optim.AdamW(loss_fn.parameters(), lr=1.0, weight_decay=0.5)
    pred, target = pair(rng)
    loss_fn(pred.requires_grad_(), target).backward()
    optimiser.step()
    assert all(torch.equal(v, before[k]) for k, v in loss_fn.state_dict().items())
