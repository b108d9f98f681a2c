"""Every kind of bad input gets a clear error naming the argument."""

import pytest
import torch

import msds

F = torch.rand(2, 8, 3, 3)


def head(**kwargs):
    args = {"fx": F, "fy": F.clone()}
    args.update(kwargs)
    return lambda: msds.gram_ssim(args["fx"], args["fy"], **{k: v for k, v in args.items() if k not in ("fx", "fy")})


def multi(fxs, fys, **kwargs):
    return lambda: msds.multiscale_gram_ssim(fxs, fys, **kwargs)


HEAD_CASES = [
    ("not a tensor", head(fx=F.numpy()), TypeError, "fx: expected a torch.Tensor"),
    ("integer tensor", head(fy=torch.ones(2, 8, 3, 3, dtype=torch.int64)), TypeError, "fy: expected a floating"),
    ("3-D", head(fx=F[0], fy=F[0]), ValueError, "fx: expected a 4-D"),
    ("C not a multiple of 4", head(fx=F[:, :6], fy=F[:, :6]), ValueError, "multiple of 4"),
    ("batch mismatch", head(fy=F[:1]), ValueError, "fy: expected the batch size and channel count of fx"),
    ("channel mismatch", head(fy=F[:, :4]), ValueError, "fy: expected the batch size and channel count of fx"),
    ("dtype mismatch", head(fy=F.double()), TypeError, "fy: expected the same dtype"),
    ("device mismatch", head(fy=F.to("meta")), ValueError, "fy: expected the same device"),
    ("empty batch", head(fx=F[:0], fy=F[:0]), ValueError, "B, h and w all >= 1"),
    ("empty map", head(fx=F[:, :, :0], fy=F[:, :, :0]), ValueError, "B, h and w all >= 1"),
    ("negative eps", head(eps=-1.0), ValueError, "eps: expected a finite number >= 0"),
    ("nan eps", head(eps=float("nan")), ValueError, "eps:"),
    ("string eps", head(eps="1e-6"), ValueError, "eps:"),
    ("unknown backend", head(backend="cuda"), ValueError, "backend: expected one of"),
    ("tensor for a list", multi(F, F), TypeError, "fxs: expected a non-empty list"),
    ("empty list", multi([], []), TypeError, "fxs: expected a non-empty list"),
    ("level count mismatch", multi([F, F], [F]), ValueError, "fys: expected 2 levels"),
    ("channels differ by level", multi([F, F[:, :4]], [F, F[:, :4]]), ValueError, "fxs\\[1\\]: expected the batch"),
    ("batch differs by level", multi([F, F[:1]], [F, F[:1]]), ValueError, "fxs\\[1\\]"),
    ("bad level pair", multi([F, F], [F, F[:1]]), ValueError, "fys\\[1\\]: expected the batch size"),
]


@pytest.mark.parametrize("case,call,error,message", HEAD_CASES, ids=[c[0] for c in HEAD_CASES])
def test_head_rejects(case, call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.fixture(scope="module")
def metric():
    return msds.MSDS(levels=2, weights=None)


IMG = torch.rand(1, 3, 32, 32)
NAN_IMG = IMG.clone()
NAN_IMG[0, 0, 0, 0] = float("nan")

MODULE_CASES = [
    ("x not a tensor", dict(x=IMG.numpy()), TypeError, "x: expected a torch.Tensor"),
    ("integer images", dict(y=(IMG * 255).to(torch.uint8)), TypeError, "y: expected a floating"),
    ("grey images", dict(x=IMG[:, :1], y=IMG[:, :1]), ValueError, "x: expected an RGB batch"),
    ("unbatched", dict(x=IMG[0], y=IMG[0]), ValueError, "x: expected an RGB batch"),
    ("empty batch", dict(x=IMG[:0], y=IMG[:0]), ValueError, "x: expected a batch of at least one"),
    ("batch mismatch", dict(y=torch.rand(2, 3, 32, 48)), ValueError, "y: expected the batch size of x \\(1\\), got 2"),
    ("device mismatch", dict(y=IMG.to("meta")), ValueError, "y: expected the same device"),
    ("too small", dict(x=IMG[..., :31], y=IMG[..., :31]), ValueError, "at least 32x32 pixels for levels=2"),
    ("above one", dict(x=IMG * 2), ValueError, "x: expected pixel values in \\[0, 1\\]"),
    ("below zero", dict(y=IMG - 1), ValueError, "y: expected pixel values in \\[0, 1\\]"),
    ("nan", dict(x=NAN_IMG), ValueError, "x: expected pixel values in \\[0, 1\\], no NaN or inf, got 1 NaN and 0 infinite"),
]


@pytest.mark.parametrize("case,args,error,message", MODULE_CASES, ids=[c[0] for c in MODULE_CASES])
def test_module_rejects(case, args, error, message, metric):
    call = {"x": IMG, "y": IMG.clone(), **args}
    with pytest.raises(error, match=message):
        metric(call["x"], call["y"])


def test_range_check_can_be_turned_off():
    model = msds.MSDS(levels=1, weights=None, check_range=False)
    assert model(IMG * 2, IMG).shape == (1,)
    loss = msds.MSDS(levels=1, weights=None, as_loss=True, check_range=False)
    assert loss(IMG * 255, IMG).shape == ()


CONSTRUCTOR_CASES = [
    ("levels 0", lambda: msds.MSDS(levels=0, weights=None), ValueError, "levels: expected an integer >= 1"),
    ("levels str", lambda: msds.MSDS(levels="3", weights=None), ValueError, "levels:"),
    ("reduction", lambda: msds.MSDS(weights=None, reduction="avg"), ValueError, "reduction: expected one of"),
    ("backend", lambda: msds.MSDS(weights=None, backend="gpu"), ValueError, "backend: expected one of"),
    ("eps", lambda: msds.DeepSSIM(weights=None, eps=-1), ValueError, "eps:"),
    ("fit fusion loss", lambda: msds.MSDS(weights=None, as_loss=True, fit_fusion=True), ValueError, "fit_fusion"),
    ("weights type", lambda: msds.MSDS(weights=3), TypeError, "weights: expected 'imagenet', a file path or None"),
]


@pytest.mark.parametrize("case,call,error,message", CONSTRUCTOR_CASES, ids=[c[0] for c in CONSTRUCTOR_CASES])
def test_constructor_rejects(case, call, error, message):
    with pytest.raises(error, match=message):
        call()


def mask_with(values, dtype=torch.float32, batch=1):
    mask = torch.zeros(batch, 1, 16, 16, dtype=dtype)
    mask[..., :8, :] = torch.tensor(values[0], dtype=dtype)
    mask[..., 8:, :] = torch.tensor(values[1], dtype=dtype)
    return mask


EMPTY_SECOND = torch.ones(2, 1, 16, 16)
EMPTY_SECOND[1] = 0

MASK_CASES = [
    ("not binary", torch.full((1, 1, 16, 16), 0.5), ValueError, "mask_x: expected a binary mask \\(0 = not salient, 1 = "),
    ("soft uint8", mask_with((0, 128), torch.uint8), ValueError, "mask_x: expected a binary mask .*1 or 255"),
    ("1 and 255 mixed", mask_with((1, 255), torch.uint8), ValueError, "mask_x: expected a binary mask"),
    ("255 as a float", mask_with((0, 255)), ValueError, "mask_x: expected a binary mask"),
    ("all zero", torch.zeros(1, 1, 16, 16), ValueError, "mask_x: expected at least one salient pixel .* batch index 0"),
    ("one image all zero", EMPTY_SECOND, ValueError, "mask_x: expected at least one salient pixel .* batch index 1"),
    ("wrong size", torch.ones(1, 1, 8, 8), ValueError, "mask_x: expected a mask of shape \\(1, 1, 16, 16\\)"),
    ("not a tensor", [[1.0]], TypeError, "mask_x: expected a torch.Tensor"),
]


@pytest.mark.parametrize("case,mask,error,message", MASK_CASES, ids=[c[0] for c in MASK_CASES])
def test_masks_rejected(case, mask, error, message):
    model = msds.DeepSSIM(weights=None)
    image = torch.rand(mask.shape[0] if isinstance(mask, torch.Tensor) else 1, 3, 16, 16)
    with pytest.raises(error, match=message):
        model(image, image, mask_x=mask)


def test_empty_mask_of_the_reference_named_too():
    model = msds.DeepSSIM(weights=None)
    image = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="mask_y: expected at least one salient pixel .* batch index 1"):
        model(image, image, mask_x=torch.ones(2, 1, 16, 16), mask_y=EMPTY_SECOND)


def test_every_form_of_a_binary_mask_scores_alike():
    """bool, 0/1 floats and integers, and uint8 0/255 are the same mask."""
    model = msds.DeepSSIM(weights=None)
    generator = torch.Generator().manual_seed(2)
    x, y = torch.rand(1, 3, 16, 16, generator=generator), torch.rand(1, 3, 16, 16, generator=generator)
    salient = torch.rand(1, 1, 16, 16, generator=generator) > 0.4
    # Masking by hand: the conv1_1 output times the mask, through the rest of the trunk.
    trunk = model.trunk.features
    def masked_features(image, mask):
        return trunk[2:](trunk[:2]((image - model.trunk.mean.float()) / model.trunk.std.float()) * mask.float())
    expected = msds.gram_ssim(masked_features(x, salient), masked_features(y, salient), backend="reference")
    for mask in (salient, salient.float(), salient.double(), salient.to(torch.int64), salient.to(torch.uint8),
                 salient.to(torch.uint8) * 255):
        got = model(x, y, mask_x=mask, mask_y=mask)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=str(mask.dtype))
