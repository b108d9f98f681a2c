"""Loading the trunk's weights: torchvision files, trimmed files, the cache, bad files."""

import hashlib
import urllib.error

import pytest
import torch

import msds
from msds.trunk import weights as W
from msds.trunk.vgg16 import build_features


def torchvision_layout(generator) -> dict:
    """A full VGG16 state dict as torchvision lays it out (random values)."""
    state = {
        f"features.{k}": torch.randn(v.shape, generator=generator) * 0.05
        for k, v in build_features().state_dict().items()
    }
    # Layers past relu5_1 and the classifier, which the trunk must ignore.
    for index in (26, 28):
        state[f"features.{index}.weight"] = torch.randn(512, 512, 3, 3, generator=generator)
        state[f"features.{index}.bias"] = torch.randn(512, generator=generator)
    state["classifier.0.weight"] = torch.randn(16, 32, generator=generator)  # shape irrelevant here
    return state


@pytest.fixture
def vgg_file(tmp_path, rng):
    state = torchvision_layout(rng)
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    return path, state


def assert_loaded(trunk, state):
    for key, value in trunk.trunk_state_dict().items():
        assert torch.equal(value, state[key]), key


def test_loads_a_torchvision_layout_file(vgg_file):
    path, state = vgg_file
    trunk = msds.VGG16Trunk(path)
    assert trunk.pretrained
    assert_loaded(trunk, state)
    assert not any(p.requires_grad for p in trunk.parameters())


def test_trimmed_file_round_trip(vgg_file, tmp_path):
    path, state = vgg_file
    trimmed = msds.save_trimmed_weights(path, tmp_path / "trimmed.pth")
    saved = torch.load(trimmed, weights_only=True)
    assert set(saved) == {k for k in state if k.startswith("features.") and int(k.split(".")[1]) < 26}
    assert_loaded(msds.VGG16Trunk(trimmed), state)


def test_environment_variable_names_the_imagenet_file(vgg_file, monkeypatch):
    path, state = vgg_file
    monkeypatch.setenv(W.ENV_VAR, str(path))
    assert_loaded(msds.MSDS(levels=1, weights="imagenet").trunk, state)


def test_hash_checked_cache_file_loads(vgg_file, tmp_path, monkeypatch):
    path, state = vgg_file
    monkeypatch.delenv(W.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    cached = W.imagenet_cache_path()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    monkeypatch.setattr(W, "IMAGENET_SHA256_PREFIX", hashlib.sha256(path.read_bytes()).hexdigest()[:8])
    assert_loaded(msds.VGG16Trunk("imagenet"), state)


def test_bad_hash_in_the_cache_is_an_error(vgg_file, tmp_path, monkeypatch):
    path, _ = vgg_file
    monkeypatch.delenv(W.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    W.imagenet_cache_path().parent.mkdir(parents=True)
    W.imagenet_cache_path().write_bytes(path.read_bytes())
    with pytest.raises(W.WeightsError, match="SHA-256 prefix 397923af"):
        msds.VGG16Trunk("imagenet")


def test_offline_without_a_cache_says_how_to_provide_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv(W.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(W.WeightsError, match=f"could not download.*{W.ENV_VAR}=PATH"):
        msds.MSDS(weights="imagenet")


def test_download_is_hash_checked_and_used(vgg_file, tmp_path, monkeypatch):
    path, state = vgg_file
    monkeypatch.delenv(W.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        with open(dst, "wb") as handle:
            handle.write(path.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    assert_loaded(msds.VGG16Trunk("imagenet"), state)
    assert calls == [(W.IMAGENET_URL, W.IMAGENET_SHA256_PREFIX)]


def test_failed_hash_on_download_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv(W.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def mismatched(url, dst, hash_prefix=None, progress=True):
        raise RuntimeError(f'invalid hash value (expected "{hash_prefix}", got "deadbeef")')

    monkeypatch.setattr(torch.hub, "download_url_to_file", mismatched)
    with pytest.raises(W.WeightsError, match="failed its hash check"):
        msds.VGG16Trunk("imagenet")


def test_missing_file(tmp_path):
    with pytest.raises(W.WeightsError, match="no such weights file"):
        msds.VGG16Trunk(tmp_path / "absent.pth")


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(W.WeightsError, match="corrupt.pth is not a readable weights file .*expected a VGG16 state dict"):
        msds.VGG16Trunk(path)


def test_truncated_file(vgg_file, tmp_path):
    path, _ = vgg_file
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(W.WeightsError, match="not a readable weights file .*expected a VGG16 state dict"):
        msds.VGG16Trunk(truncated)


def test_missing_keys(vgg_file, tmp_path):
    _, state = vgg_file
    del state["features.24.weight"], state["features.0.bias"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(W.WeightsError, match="missing 2 keys"):
        msds.VGG16Trunk(path)


def test_mismatched_shapes(vgg_file, tmp_path):
    _, state = vgg_file
    state["features.10.weight"] = torch.zeros(256, 128, 5, 5)
    path = tmp_path / "mismatched.pth"
    torch.save(state, path)
    with pytest.raises(W.WeightsError, match=r"features.10.weight has shape \(256, 128, 5, 5\), expected \(256, 128, 3, 3\)"):
        msds.VGG16Trunk(path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(W.WeightsError, match="does not hold a state dict"):
        msds.VGG16Trunk(path)


def test_random_trunk_is_seeded():
    a, b = msds.VGG16Trunk(None), msds.VGG16Trunk(None)
    assert not a.pretrained
    for key, value in a.trunk_state_dict().items():
        assert torch.equal(value, b.trunk_state_dict()[key])
