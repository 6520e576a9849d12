"""amf.preprocess: the one rule for odd patches, resizing and normalisation (shared with training)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from amf import AmfError
from amf.preprocess import Stack, canonical_patch, centre_square, normalize, prepare, resize, to_rgb, to_uint8

RNG = np.random.default_rng(0)


def rgb(h=128, w=128):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_uint8_passes_through_unchanged():
    img = rgb()
    assert to_uint8(img) is img


def test_16_bit_scales_to_full_uint8_range():
    img8 = rgb(8, 8)
    img16 = img8.astype(np.uint16) * 257  # 0..255 -> 0..65535 exactly
    np.testing.assert_array_equal(to_uint8(img16), img8)
    assert to_uint8(np.array([[65535, 0, 32768]], np.uint16)).tolist() == [[255, 0, 128]]


def test_float_unit_range_and_255_range():
    assert to_uint8(np.array([[0.0, 0.5, 1.0]])).tolist() == [[0, 128, 255]]
    assert to_uint8(np.array([[0.0, 2.0, 300.0, -4.0]])).tolist() == [[0, 2, 255, 0]]  # > 1: 0..255, clipped


def test_bool_and_wide_integers():
    assert to_uint8(np.array([[True, False]])).tolist() == [[255, 0]]
    for dtype in (np.int8, np.int32, np.uint32, np.int64, np.uint64):  # taken as 0..255 ...
        assert to_uint8(np.array([[0, 7, 127]], dtype)).tolist() == [[0, 7, 127]]
    assert to_uint8(np.array([[0, 7, 255]], np.int32)).tolist() == [[0, 7, 255]]


@pytest.mark.parametrize(
    "values,dtype",
    [([-5, 7, 99], np.int8), ([0, 7, 255_000], np.int32), ([-1, 7, 200], np.int64), ([0, 256, 7], np.uint32)],
)
def test_wide_or_signed_integers_outside_0_255_are_refused_not_clipped(values, dtype):
    # ... and refused outside it: int32 up to 255,000 used to become all white, negatives black
    with pytest.raises(AmfError, match=f"pixel type {np.dtype(dtype)} holds values .* must lie in 0..255"):
        to_uint8(np.array([values], dtype))
    with pytest.raises(AmfError, match="must lie in 0..255"):
        Stack(np.array([[[0, 1, 2]], [values]], dtype))  # one bad page refuses the stack


def test_the_float_range_is_decided_once_per_stack():
    dark = np.full((4, 4, 3), 0.8, np.float32)  # a dark page of a [0, 255] stack ...
    bright = np.full((4, 4, 3), 200.0, np.float32)
    stack = Stack(np.stack([bright, dark]))
    assert stack[1].max() == 1 and stack[0].max() == 200  # ... stays dark (it was 204, white, per page)
    np.testing.assert_array_equal(
        prepare(np.stack([bright, dark]), 4, [0] * 3, [1] * 3), prepare([stack[0], stack[1]], 4, [0] * 3, [1] * 3)
    )
    assert canonical_patch(dark).max() == 204  # alone, the same page is a [0, 1] stack of one
    unit = Stack([np.full((2, 2), 0.5), np.full((2, 2), 1.0)])
    assert unit.scale == 255.0 and unit[0].max() == 128 and unit[1].max() == 255
    with pytest.raises(AmfError, match="NaN"):
        Stack(np.stack([dark, np.full((4, 4, 3), np.inf, np.float32)]))
    with pytest.raises(AmfError, match="share one pixel type"):
        Stack([dark, bright.astype(np.float64)])


def test_a_stack_is_made_canonical_page_by_page_from_a_view():
    pages = RNG.integers(0, 256, (5, 6, 8, 3), dtype=np.uint8)
    stack = Stack(pages)
    assert len(stack) == 5 and len(stack[1:4]) == 3
    np.testing.assert_array_equal(np.stack(stack), pages[:, :, 1:7])  # rule 3, page by page
    square = RNG.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    assert np.shares_memory(Stack(square)[2], square)  # square uint8 RGB pages are views, not copies
    with pytest.raises(AmfError, match="1 to 4 channels"):  # a layout error shows up at once
        Stack(np.zeros((3, 4, 4, 5), np.uint8))


def test_nan_pixels_are_an_error():
    with pytest.raises(AmfError, match="NaN"):
        to_uint8(np.array([[0.1, np.nan]], np.float32))


@pytest.mark.parametrize("shape", [(16, 16), (16, 16, 1), (16, 16, 2)])
def test_gray_and_gray_alpha_repeat_the_gray_channel(shape):
    img = RNG.integers(0, 256, shape, dtype=np.uint8)
    out = to_rgb(img)
    gray = img if img.ndim == 2 else img[..., 0]
    assert out.shape == (16, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_rgba_drops_alpha_without_compositing():
    img = RNG.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb(img), img[..., :3])


@pytest.mark.parametrize("shape,msg", [((8, 8, 5), "1 to 4 channels"), ((2, 8, 8, 3), "2-D")])
def test_unsupported_layouts_are_errors(shape, msg):
    with pytest.raises(AmfError, match=msg):
        to_rgb(np.zeros(shape, np.uint8))


def test_centre_square_crops_the_longer_side_around_the_centre():
    img = np.arange(10 * 16).reshape(10, 16, 1)
    out = centre_square(img)
    assert out.shape == (10, 10, 1)
    np.testing.assert_array_equal(out, img[:, 3:13])
    assert centre_square(img.transpose(1, 0, 2)).shape == (10, 10, 1)


def test_empty_patch_is_an_error():
    with pytest.raises(AmfError, match="empty"):
        canonical_patch(np.zeros((0, 5, 3), np.uint8))


def test_canonical_patch_applies_all_three_rules():
    img16 = rgb(20, 30).astype(np.uint16) * 257
    alpha = np.full((20, 30, 1), 65535, np.uint16)
    out = canonical_patch(np.concatenate([img16, alpha], 2))
    assert out.dtype == np.uint8 and out.shape == (20, 20, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, (img16[:, 5:25] // 257).astype(np.uint8))


@pytest.mark.parametrize("method", ["nearest", "bilinear", "bicubic", "lanczos"])
def test_resize_is_pillows(method):
    img = rgb(100, 100)
    ref = Image.fromarray(img).resize((64, 64), getattr(Image.Resampling, method.upper()))
    np.testing.assert_array_equal(resize(img, 64, method), np.asarray(ref))


def test_resize_is_a_no_op_at_the_right_size_and_rejects_unknown_methods():
    img = rgb()
    assert resize(img, 128, "no-such-method") is img
    with pytest.raises(AmfError, match="resize method"):
        resize(img, 64, "no-such-method")


def test_normalize_is_nchw_float32_per_channel():
    batch = np.stack([rgb(4, 4), rgb(4, 4)])
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    x = normalize(batch, mean, std)
    assert x.dtype == np.float32 and x.shape == (2, 3, 4, 4) and x.flags.c_contiguous
    for c in range(3):
        want = (batch[..., c] / 255.0 - mean[c]) / std[c]
        np.testing.assert_allclose(x[:, c], want, rtol=1e-5, atol=1e-6)


def test_prepare_equals_the_rules_then_resize_then_normalize():
    patches = [rgb(128, 128), rgb(90, 140), RNG.integers(0, 256, (128, 128), dtype=np.uint8)]
    x = prepare(patches, 96, [0.5] * 3, [0.5] * 3, "bicubic")
    want = normalize(np.stack([resize(canonical_patch(p), 96, "bicubic") for p in patches]), [0.5] * 3, [0.5] * 3)
    assert x.shape == (3, 3, 96, 96)
    np.testing.assert_array_equal(x, want)
    np.testing.assert_array_equal(prepare(np.stack(patches[:1]), 96, [0.5] * 3, [0.5] * 3, "bicubic"), want[:1])
