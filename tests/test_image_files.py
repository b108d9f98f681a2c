"""Image and mask files read at their true scale, whatever their bit depth and channels."""

import struct
import warnings
import zlib

import numpy as np
import pytest
import torch

import msds
from msds.images import ImageError, load_image, load_mask
from helpers import images


def write_png(path, values: np.ndarray) -> None:
    """A PNG written byte by byte (not by Pillow): 8- or 16-bit, grayscale or RGB."""
    height, width = values.shape[:2]
    channels = 1 if values.ndim == 2 else values.shape[2]
    depth = 16 if values.dtype == np.uint16 else 8
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    rows = values.astype(">u2" if depth == 16 else "u1").reshape(height, -1).view(np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def gradient16(height=32, width=40) -> np.ndarray:
    """Known 16-bit values spanning the whole range, not multiples of 257 (so not 8-bit values scaled up)."""
    ramp = np.linspace(0, 65535, height * width).round().astype(np.uint16).reshape(height, width)
    return ramp ^ np.uint16(0x0055)


def test_a_16_bit_grayscale_png_loads_at_its_true_scale(tmp_path):
    values = gradient16()
    write_png(tmp_path / "gray16.png", values)
    loaded = load_image(tmp_path / "gray16.png")
    expected = torch.from_numpy(values.astype(np.float64) / 65535)
    assert loaded.shape == (1, 3, 32, 40)
    for channel in range(3):
        torch.testing.assert_close(loaded[0, channel].double(), expected, rtol=0, atol=2 ** -24)


def test_a_16_bit_rgb_png_loads_at_its_true_scale(tmp_path):
    values = np.stack([gradient16(), gradient16()[::-1], 65535 - gradient16()], axis=2)
    write_png(tmp_path / "rgb16.png", values)
    loaded = load_image(str(tmp_path / "rgb16.png"))  # a plain string path
    expected = torch.from_numpy(values.astype(np.float64) / 65535).permute(2, 0, 1)
    # Pillow keeps 8 of the 16 bits: within one 8-bit step.
    torch.testing.assert_close(loaded[0].double(), expected, rtol=0, atol=1 / 255)


def test_a_16_bit_png_scores_like_its_8_bit_copy(tmp_path):
    generator = torch.Generator().manual_seed(9)
    picture = images((2, 3, 48, 48), generator, torch.float64)
    exact = {}
    for name, image in (("ref", picture[1]), ("dist", picture[0] * 0.8 + 0.1)):
        gray = image.mean(dim=0)
        exact[name] = gray.expand(1, 3, -1, -1).float()
        write_png(tmp_path / f"{name}16.png", (gray.numpy() * 65535).round().astype(np.uint16))
        write_png(tmp_path / f"{name}8.png", (gray.numpy() * 255).round().astype(np.uint8))
    metric = msds.DeepSSIM(weights=None)
    score = {bits: metric(load_image(tmp_path / f"dist{bits}.png"), load_image(tmp_path / f"ref{bits}.png")).item()
             for bits in (8, 16)}
    unquantised = metric(exact["dist"], exact["ref"]).item()
    # 8 bits move each pixel by up to 1/510 and the score here by 9.5e-4; 16
    # bits by 256 times less (measured 6e-7, float32 rounding). A 16-bit file
    # read at 8 bits would miss the first bound by 10 times; the clipped
    # 16-bit read this replaces scored 1.0, 0.118 away.
    assert abs(score[16] - unquantised) < 1e-4
    assert abs(score[16] - score[8]) < 3e-3


def test_a_transparent_image_is_warned_about_once_by_name(tmp_path):
    rgba = np.full((16, 16, 4), 200, np.uint8)
    rgba[..., 3] = 255
    write_png(tmp_path / "opaque.png", rgba)
    rgba[:4, :4, 3] = 0
    write_png(tmp_path / "transparent.png", rgba)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(tmp_path / "opaque.png")  # an alpha channel that is all opaque is fine
    with pytest.warns(UserWarning, match="transparent.png: the image is not fully opaque") as record:
        load_image(tmp_path / "transparent.png")
    assert len(record) == 1


MASK_FILES = [
    ("8-bit 0/255", lambda m: (m * 255).astype(np.uint8)),
    ("8-bit 0/1", lambda m: m.astype(np.uint8)),
    ("16-bit 0/65535", lambda m: (m * 65535).astype(np.uint16)),
]


@pytest.mark.parametrize("case,encode", MASK_FILES, ids=[c[0] for c in MASK_FILES])
def test_mask_files_follow_the_api_rule(tmp_path, case, encode):
    salient = np.zeros((16, 20), bool)
    salient[3:11, 5:17] = True
    write_png(tmp_path / "mask.png", encode(salient))
    image = torch.rand(1, 3, 16, 20)
    loaded = load_mask(tmp_path / "mask.png", image, "image.png")
    assert torch.equal(loaded, torch.from_numpy(salient).float()[None, None])


@pytest.mark.parametrize("values,message", [
    (np.zeros((16, 20), np.uint8), "mask.png: no salient pixel"),
    (np.arange(320, dtype=np.uint8).reshape(16, 20), "mask.png: expected a binary mask"),
])
def test_mask_files_refused_like_the_api(tmp_path, values, message):
    write_png(tmp_path / "mask.png", values)
    with pytest.raises(ImageError, match=message):
        load_mask(tmp_path / "mask.png", torch.rand(1, 3, 16, 20), "image.png")
