"""MSDS and DeepSSIM as torchmetrics metrics: accumulation, sync across processes, collections."""

import importlib
import subprocess
import sys

import pytest
import torch

import msds
from helpers import ROOT, images, subprocess_env

torchmetrics = pytest.importorskip("torchmetrics")
from msds.torchmetrics import DeepSSIMMetric, MSDSMetric  # noqa: E402

HERE = ROOT / "tests"


def test_compute_is_the_mean_over_batches_of_different_sizes(rng):
    metric = MSDSMetric(levels=2, weights=None)
    module = msds.MSDS(levels=2, weights=None)
    scores = []
    for batch, x_size, y_size in ((3, (32, 32), (40, 32)), (1, (48, 40), (32, 32)), (2, (33, 35), (33, 35))):
        preds, target = images((batch, 3, *x_size), rng, torch.float32), images((batch, 3, *y_size), rng, torch.float32)
        metric.update(preds, target)
        scores.append(module(preds, target))
    expected = torch.cat(scores).double().mean()
    torch.testing.assert_close(metric.compute(), expected, rtol=0, atol=1e-7)
    assert metric.count.item() == 6
    metric.reset()
    assert metric.count.item() == 0 and metric.score_sum.item() == 0


def test_states_are_sums_and_the_trunk_is_not_one(rng):
    metric = MSDSMetric(levels=2, weights=None)
    assert set(metric._defaults) == {"score_sum", "count"}
    assert metric._reductions["score_sum"] is not None and metric._reductions["count"] is not None
    assert metric.higher_is_better is True and metric.is_differentiable is True
    assert metric.full_state_update is False


def test_forward_gives_the_batch_value_with_a_gradient(rng):
    metric = MSDSMetric(levels=1, weights=None)
    target = images((2, 3, 32, 32), rng, torch.float32)
    preds = images((2, 3, 32, 40), rng, torch.float32).requires_grad_()
    value = metric(preds, target)  # a validation step's batch value, as Lightning's self.log takes it
    value.backward()
    assert preds.grad is not None and preds.grad.abs().sum() > 0
    torch.testing.assert_close(value.detach(), msds.MSDS(levels=1, weights=None)(preds, target).double().mean().detach(),
                               rtol=0, atol=1e-7)
    assert metric.count.item() == 2  # forward also accumulated the batch
    assert not metric.score_sum.requires_grad


def test_options_pass_through():
    metric = MSDSMetric(levels=2, weights=None, fast=False, precision="ieee", backend="reference", eps=1e-5)
    scorer = metric.scorer
    assert (scorer.levels, scorer.fast, scorer.precision, scorer.backend, scorer.eps) == (2, False, "ieee",
                                                                                         "reference", 1e-5)
    lite = DeepSSIMMetric(weights=None, lite=True)
    assert lite.scorer.lite and not lite.scorer.as_loss


def test_deepssim_metric_with_saliency_masks(rng):
    metric = DeepSSIMMetric(weights=None)
    preds, target = images((2, 3, 32, 40), rng, torch.float32), images((2, 3, 36, 32), rng, torch.float32)
    mask_preds = (torch.rand(2, 1, 32, 40, generator=rng) > 0.3).float()
    mask_target = (torch.rand(2, 1, 36, 32, generator=rng) > 0.3).float()
    metric.update(preds, target, mask_preds, mask_target)
    expected = msds.DeepSSIM(weights=None)(preds, target, mask_preds, mask_target).double().mean()
    torch.testing.assert_close(metric.compute(), expected, rtol=0, atol=1e-7)


def test_metric_collection_and_clone(rng):
    collection = torchmetrics.MetricCollection({"msds": MSDSMetric(levels=1, weights=None),
                                                "deepssim": DeepSSIMMetric(weights=None)})
    preds, target = images((2, 3, 32, 32), rng, torch.float32), images((2, 3, 32, 32), rng, torch.float32)
    collection.update(preds, target)
    values = collection.compute()
    # MSDS at one level is DeepSSIM.
    torch.testing.assert_close(values["msds"], values["deepssim"], rtol=0, atol=1e-7)
    twin = collection.clone()
    twin.reset()
    twin.update(target, target)
    assert twin.compute()["msds"].item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(collection.compute()["msds"], values["msds"])  # the original is untouched


@pytest.mark.full
def test_two_processes_sync_to_the_single_process_value(tmp_path):
    # Both runs score in child processes with their default threads (all the
    # cores for one process, one each for two): the batches' float32 scores
    # do not depend on the thread count, so only the split differs.
    env = subprocess_env()
    env.pop("OMP_NUM_THREADS", None)
    env["MSDS_FIXED_THREADS"] = "1"  # the default count even where other processes keep cores busy
    values = {}
    for processes in (1, 2):
        out = tmp_path / f"synced{processes}.pt"
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                              f"--nproc_per_node={processes}", str(HERE / "metric_sync.py"), str(out)],
                             env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        synced = torch.load(out)
        assert synced["world"] == processes
        values[processes] = synced["value"]
    torch.testing.assert_close(values[2], values[1], rtol=0, atol=1e-12)
    # And the value is the mean score over every batch, computed here directly.
    sys.path.insert(0, str(HERE))
    import metric_sync

    module = msds.MSDS(levels=2, weights=None)
    scores = torch.cat([module(preds, target) for preds, target in metric_sync.batches()]).double()
    torch.testing.assert_close(values[1], scores.mean(), rtol=0, atol=1e-6)


def test_a_clear_message_without_torchmetrics(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchmetrics", None)  # what an absent package looks like to import
    monkeypatch.delitem(sys.modules, "msds.torchmetrics")
    with pytest.raises(ImportError, match=r'pip install "torch-msds\[torchmetrics\]"'):
        importlib.import_module("msds.torchmetrics")


def test_a_collection_holds_one_trunk_and_a_small_state_dict(rng):
    collection = torchmetrics.MetricCollection({"msds": MSDSMetric(levels=2, weights=None),
                                                "deepssim": DeepSSIMMetric(weights=None),
                                                "lite": DeepSSIMMetric(weights=None, lite=True)})
    trunks = {id(module) for module in collection.modules() if isinstance(module, msds.VGG16Trunk)}
    assert len(trunks) == 1
    state = collection.state_dict()
    assert list(state) == ["msds.scorer.fusion_logits"]
    # Another weights file is another trunk.
    other = MSDSMetric(levels=2, weights=None)
    assert other.scorer.trunk is collection["msds"].scorer.trunk
    assert DeepSSIMMetric(weights=other.scorer.trunk).scorer.trunk is other.scorer.trunk


def test_old_checkpoints_holding_the_trunk_still_load(rng):
    metric = MSDSMetric(levels=2, weights=None)
    old = {"scorer.fusion_logits": torch.tensor([0.5, -0.5])}
    old.update({f"scorer.trunk.{key}": value.clone() for key, value in metric.scorer.trunk.state_dict().items()})
    trunk_before = {key: value.clone() for key, value in metric.scorer.trunk.state_dict().items()}
    result = metric.load_state_dict(old)  # strict
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(metric.scorer.fusion_logits.detach(), torch.tensor([0.5, -0.5]))
    assert all(torch.equal(value, trunk_before[key]) for key, value in metric.scorer.trunk.state_dict().items())
    metric.load_state_dict(metric.state_dict())  # and the new, small form
    with pytest.raises(RuntimeError, match="fusion_logits"):
        metric.load_state_dict({})  # what is not the trunk is still required


@pytest.mark.parametrize("kwargs,message", [
    (dict(target=torch.rand(3, 3, 32, 32)), "target: expected the batch size of preds \\(2\\), got 3"),
    (dict(preds=torch.rand(2, 1, 32, 32)), "preds: expected an RGB batch"),
    (dict(preds=torch.rand(2, 3, 32, 32) * 255), "preds: expected pixel values in \\[0, 1\\]"),
])
def test_errors_name_preds_and_target(kwargs, message):
    call = {"preds": torch.rand(2, 3, 32, 32), "target": torch.rand(2, 3, 32, 32), **kwargs}
    with pytest.raises((TypeError, ValueError), match=message):
        MSDSMetric(levels=1, weights=None).update(call["preds"], call["target"])
    image = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="mask_preds: expected a binary mask"):
        DeepSSIMMetric(weights=None).update(image, image, torch.full((2, 1, 32, 32), 0.5))


def test_mixed_dtypes_and_value_ranges(rng):
    preds, target = images((2, 3, 32, 32), rng, torch.float32), images((2, 3, 32, 32), rng, torch.float32)
    metric = MSDSMetric(levels=1, weights=None)
    metric.update(preds.bfloat16(), target)
    expected = msds.MSDS(levels=1, weights=None)(preds.bfloat16().float(), target).double().mean()
    torch.testing.assert_close(metric.compute(), expected, rtol=0, atol=1e-7)
    ranged = DeepSSIMMetric(weights=None, data_range=(-1, 1))
    ranged.update(preds.double() * 2 - 1, target.double() * 2 - 1)
    unit = msds.DeepSSIM(weights=None)(preds.double(), target.double()).mean()
    torch.testing.assert_close(ranged.compute(), unit, rtol=0, atol=1e-12)
