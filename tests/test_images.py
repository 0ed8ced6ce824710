"""Image loading against real files written by PIL (and one hand-built PNG bomb), all in tmp_path."""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from deop.images import MAX_PIXELS, ImageError, image_key, load_image, resize_max_side

RNG = np.random.default_rng(0)
NOISE = RNG.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)


def save(tmp_path: Path, img: Image.Image, name: str, **kwargs) -> Path:
    path = tmp_path / name
    img.save(path, **kwargs)
    return path


def black_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG, compressed row block by row block: a huge one never exists decoded."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    per_block = max(1, (1 << 20) // len(row))
    comp, parts, left = zlib.compressobj(9), [], height
    while left:
        n = min(per_block, left)
        parts.append(comp.compress(row * n))
        left -= n
    parts.append(comp.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))


def check_rgb(out: np.ndarray, shape: tuple[int, int]) -> None:
    assert out.shape == (*shape, 3)
    assert out.dtype == np.uint8 and out.flags.c_contiguous


# --- files of every common kind -------------------------------------------------------------------

def test_rgb_png_exact_from_every_source_kind(tmp_path):
    path = save(tmp_path, Image.fromarray(NOISE), "noise.png")
    data = path.read_bytes()
    with open(path, "rb") as f:
        from_file = load_image(f)
    with Image.open(path) as pil:
        from_pil = load_image(pil)
    for out in (load_image(path), load_image(str(path)), load_image(data), load_image(io.BytesIO(data)),
                from_file, from_pil, load_image(NOISE)):
        check_rgb(out, (48, 64))
        np.testing.assert_array_equal(out, NOISE)


def test_rgb_jpeg_roughly_equal(tmp_path):
    smooth = np.zeros((40, 60, 3), np.uint8)
    smooth[:, :30] = (200, 40, 40)
    smooth[:, 30:] = (30, 60, 220)
    out = load_image(save(tmp_path, Image.fromarray(smooth), "a.jpg", quality=95))
    check_rgb(out, (40, 60))
    assert np.abs(out[5:35, 5:25].astype(int) - smooth[5:35, 5:25]).max() <= 6
    assert np.abs(out[5:35, 35:55].astype(int) - smooth[5:35, 35:55]).max() <= 6


def test_grayscale_and_one_bit(tmp_path):
    gray = NOISE[..., 0]
    out = load_image(save(tmp_path, Image.fromarray(gray), "g.png"))
    check_rgb(out, (48, 64))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)
    bits = gray > 127
    out = load_image(save(tmp_path, Image.fromarray(bits), "b.png"))
    np.testing.assert_array_equal(out[..., 1], np.where(bits, 255, 0))


def test_rgba_flattened_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 0)  # fully transparent: white
    rgba[0, 1] = (10, 20, 30, 255)  # opaque: unchanged
    rgba[0, 2] = (0, 0, 0, 128)  # half black over white: mid grey
    out = load_image(save(tmp_path, Image.fromarray(rgba, "RGBA"), "a.png"))
    check_rgb(out, (4, 4))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [10, 20, 30]
    assert out[0, 2].tolist() == [127, 127, 127]


def test_la_flattened_on_white(tmp_path):
    la = Image.new("LA", (3, 2), (0, 255))
    la.putpixel((1, 1), (0, 0))
    out = load_image(save(tmp_path, la, "la.png"))
    assert out[1, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]


def test_palette_with_transparency(tmp_path):
    pal = Image.new("P", (5, 5), 1)
    pal.putpalette([0, 255, 0] + [200, 0, 0] + [0] * 762)
    pal.putpixel((2, 3), 0)
    path = save(tmp_path, pal, "p.png", transparency=0)
    with Image.open(path) as reopened:
        assert reopened.mode == "P" and "transparency" in reopened.info
    out = load_image(path)
    assert out[3, 2].tolist() == [255, 255, 255]  # index 0: transparent green becomes white
    assert out[0, 0].tolist() == [200, 0, 0]


def test_sixteen_bit_png_scaled(tmp_path):
    wide = np.array([[0, 256, 65535], [32768, 1000, 511]], np.uint16)
    path = save(tmp_path, Image.fromarray(wide), "16.png")
    with Image.open(path) as reopened:
        assert reopened.mode == "I;16"
    out = load_image(path)
    check_rgb(out, (2, 3))
    np.testing.assert_array_equal(out[..., 0], wide >> 8)
    # 8-bit values stored in a 16-bit file are kept, not crushed to black.
    narrow = np.array([[0, 17, 255]], np.uint16)
    out = load_image(save(tmp_path, Image.fromarray(narrow), "n.png"))
    np.testing.assert_array_equal(out[..., 2], narrow)


def test_wide_pil_modes():
    big_endian = Image.new("I;16B", (2, 1), 0x1234)
    assert load_image(big_endian)[0, 0].tolist() == [0x12] * 3
    signed = Image.fromarray(np.array([[-100, 0, 100]], np.int32), "I")
    assert load_image(signed)[0, :, 0].tolist() == [0, 128, 255]  # stretched by its actual range
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    assert load_image(unit)[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_jpeg(tmp_path):
    path = save(tmp_path, Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "c.jpg", quality=95)
    with Image.open(path) as reopened:
        assert reopened.mode == "CMYK"
    out = load_image(path)
    check_rgb(out, (16, 16))
    assert np.abs(out[8, 8].astype(int) - (255, 0, 0)).max() <= 8


def test_ycbcr_and_lab_images():
    assert load_image(Image.new("YCbCr", (2, 2), (100, 128, 128)))[0, 0].tolist() == [100, 100, 100]
    red = Image.new("RGB", (2, 2), (200, 30, 30))
    srgb, lab_profile = ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB")
    to_lab = ImageCms.buildTransform(srgb, lab_profile, "RGB", "LAB")
    lab = ImageCms.applyTransform(red, to_lab)
    assert lab.mode == "LAB"
    assert np.abs(load_image(lab)[0, 0].astype(int) - (200, 30, 30)).max() <= 3


def test_exif_orientation_applied(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:] = (0, 0, 255)
    img[:10, :10] = (255, 0, 0)  # red top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    out = load_image(save(tmp_path, Image.fromarray(img), "rot.jpg", quality=95, exif=exif))
    check_rgb(out, (40, 20))  # height and width swapped
    assert np.abs(out[5, 15].astype(int) - (255, 0, 0)).max() <= 20  # the corner is now top-right
    assert np.abs(out[5, 5].astype(int) - (0, 0, 255)).max() <= 20
    assert np.abs(out[35, 15].astype(int) - (0, 0, 255)).max() <= 20


@pytest.mark.parametrize("size", [(1, 1), (500, 1), (1, 500)])
def test_tiny_and_thin_images(tmp_path, size):
    out = load_image(save(tmp_path, Image.new("RGB", size, (1, 2, 3)), "t.png"))
    check_rgb(out, (size[1], size[0]))
    assert (out == (1, 2, 3)).all()


# --- inputs that must fail with one clear line ----------------------------------------------------

def test_not_an_image(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not a picture\n" * 10)
    with pytest.raises(ImageError, match="not an image file"):
        load_image(path)
    with pytest.raises(ImageError, match="not an image file"):
        load_image(b"GIF89a but not really")


def test_empty_inputs(tmp_path):
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(ImageError, match="the file is empty"):
        load_image(path)
    with pytest.raises(ImageError, match="the file is empty"):
        load_image(b"")
    with pytest.raises(ImageError, match="the file is empty"):
        load_image(io.BytesIO())


def test_missing_path_and_folder_and_odd_sources(tmp_path):
    missing = tmp_path / "nope" / "cat.png"
    with pytest.raises(ImageError, match="no such file") as err:
        load_image(missing)
    assert str(missing) in str(err.value)
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="binary mode"):
        load_image(io.StringIO("text"))
    with pytest.raises(ImageError, match="int"):
        load_image(42)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files(tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray(NOISE).save(buf, fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt") as err:
        load_image(path)
    assert str(path) in str(err.value)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2])


def test_display_name_replaces_the_path_in_every_file_error(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(NOISE).save(buf, "PNG")
    cut = tmp_path / "cut.png"
    cut.write_bytes(buf.getvalue()[:200])
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    empty = tmp_path / "empty.png"
    empty.touch()
    for path, message in ((cut, "truncated or corrupt"), (text, "not an image file"), (empty, "the file is empty"),
                          (tmp_path / "gone.png", "no such file")):
        with pytest.raises(ImageError, match=message) as err:
            load_image(path, display_name="holiday.png")
        assert "holiday.png" in str(err.value) and str(tmp_path) not in str(err.value)


def test_black_png_helper_makes_real_pngs():
    out = load_image(black_png(37, 5))
    check_rgb(out, (5, 37))
    assert (out == 0).all()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    data = black_png(30000, 30000)
    assert len(data) < 200_000  # 900 megapixels in ~110 KB (deflate caps out near 1000:1)
    return data


def test_decompression_bomb_rejected_without_decoding(tmp_path, bomb):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    start = time.perf_counter()
    with pytest.raises(ImageError, match="too large"):
        load_image(path)
    assert time.perf_counter() - start < 1.0


def test_own_limit_does_not_depend_on_pil_globals(tmp_path, bomb, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # someone disabled PIL's guard
    with pytest.raises(ImageError, match=r"too large: 30000x30000 pixels \(limit 50 megapixels\)"):
        load_image(bomb)


def test_limit_below_pils(tmp_path):
    # 60 megapixels: under PIL's own warning threshold (~89M), over ours.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and PIL's bomb warning never escapes as a warning
        with pytest.raises(ImageError, match=r"10000x6000 pixels \(limit 50 megapixels\)"):
            load_image(black_png(10000, 6000))
        with pytest.raises(ImageError, match="10000x10000"):
            load_image(black_png(10000, 10000))  # over PIL's warning threshold, under its error
    assert MAX_PIXELS == 50_000_000
    with pytest.raises(ImageError, match="too large"):
        load_image(Image.new("RGB", (20, 10)), max_pixels=100)
    with pytest.raises(ImageError, match="too large"):
        load_image(np.zeros((20, 10, 3), np.uint8), max_pixels=100)
    assert load_image(np.zeros((10, 10), np.uint8), max_pixels=100).shape == (10, 10, 3)


# --- numpy inputs ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("array", "expected"), [
    (np.array([[0, 128, 255]], np.uint8), [0, 128, 255]),
    (np.array([[0, 256, 65535]], np.uint16), [0, 1, 255]),
    (np.array([[0, 17, 255]], np.uint16), [0, 17, 255]),
    (np.array([[False, True, True]]), [0, 255, 255]),
    (np.array([[0.0, 0.5, 1.0]], np.float32), [0, 128, 255]),
    (np.array([[-0.5, 0.25, 7.0]], np.float64), [0, 64, 255]),
    (np.array([[0.0, np.nan, 1.0]], np.float16), [0, 0, 255]),
    (np.array([[0, 9, 255]], np.int64), [0, 9, 255]),
], ids=["uint8", "uint16", "uint16-8bit", "bool", "float32", "float64-clipped", "float16-nan", "int64"])
def test_numpy_dtypes(array, expected):
    out = load_image(array)
    check_rgb(out, (1, 3))
    for c in range(3):
        assert out[0, :, c].tolist() == expected


def test_numpy_shapes():
    gray = NOISE[..., 0]
    np.testing.assert_array_equal(load_image(gray[..., None]), load_image(gray))
    np.testing.assert_array_equal(load_image(gray)[..., 2], gray)
    rgba = np.concatenate([NOISE, np.zeros((48, 64, 1), np.uint8)], axis=2)
    assert (load_image(rgba) == 255).all()  # alpha 0 everywhere: all white
    rgba[..., 3] = 255
    np.testing.assert_array_equal(load_image(rgba), NOISE)
    flipped = NOISE[:, ::-1]
    out = load_image(flipped)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, flipped)


@pytest.mark.parametrize("array", [
    np.zeros((4, 4, 2), np.uint8), np.zeros((2, 4, 4, 3), np.uint8), np.zeros(12, np.uint8),
    np.zeros((0, 4, 3), np.uint8), np.zeros((4, 0), np.uint8),
    np.array([[0, 300]], np.int32), np.zeros((2, 2), np.complex64), np.array([["a", "b"]]),
], ids=["2-channels", "4-d", "1-d", "zero-height", "zero-width", "int-out-of-range", "complex", "str"])
def test_numpy_rejected(array):
    with pytest.raises(ImageError):
        load_image(array)


def test_zero_sized_pil_image():
    with pytest.raises(ImageError, match="zero size"):
        load_image(Image.new("RGB", (0, 5)))


# --- resizing and keys ----------------------------------------------------------------------------

def test_resize_max_side_keeps_aspect():
    img = np.zeros((500, 1000, 3), np.uint8)
    img[:, 500:] = 200
    out = resize_max_side(img, 100)
    assert out.shape == (50, 100, 3) and out.dtype == np.uint8
    assert out[25, 10].tolist() == [0, 0, 0] and out[25, 90].tolist() == [200, 200, 200]
    assert resize_max_side(np.zeros((3, 1000, 3), np.uint8), 100).shape == (1, 100, 3)  # at least 1 px
    assert resize_max_side(np.zeros((999, 10, 3), np.uint8), 333).shape == (333, 3, 3)


def test_resize_max_side_noop_returns_same_object():
    assert resize_max_side(NOISE, 64) is NOISE
    assert resize_max_side(NOISE, 1000) is NOISE
    with pytest.raises(ValueError):
        resize_max_side(NOISE, 0)


def test_image_key():
    key = image_key(NOISE)
    assert len(key) == 32 and int(key, 16) >= 0
    assert image_key(NOISE.copy()) == key
    assert image_key(np.asfortranarray(NOISE)) == key  # same pixels, other memory layout
    changed = NOISE.copy()
    changed[10, 10, 1] ^= 1
    assert image_key(changed) != key
    assert image_key(NOISE.reshape(64, 48, 3)) != key  # same bytes, other shape


def test_data_files_pil_recognises_but_cannot_read_are_not_images():
    """PIL identifies HDF5 (and GRIB, BUFR) by their signature but has no pixels for them: that is "not an
    image", not "truncated or corrupt"."""
    with pytest.raises(ImageError, match=r"not an image file: scan\.h5 \(a HDF5 data file\)"):
        load_image(b"\x89HDF\r\n\x1a\n" + bytes(600), display_name="scan.h5")


# -- images too narrow for the models ------------------------------------------------------------------------
NARROW = [(1, 20000), (20000, 2), (1, 65), (3, 200)]  # (height, width): a short side past MAX_ASPECT


@pytest.mark.parametrize("size", NARROW)
def test_an_image_too_narrow_for_the_models_is_refused_with_the_limit(segmenter, size):
    """A short side that would round to zero pixels at SAM's or CLIP's input size is an ImageError naming the
    limit, raised before any model runs (it was SAM's "height and width must be > 0", an internal error)."""
    from deop.errors import ImageError
    from deop.images import MAX_ASPECT

    image = np.full((*size, 3), 128, dtype=np.uint8)
    with pytest.raises(ImageError, match=f"too narrow to segment: {size[1]} x {size[0]} pixels, its long side more "
                                         f"than {MAX_ASPECT} times its short side"):
        segmenter.segment(image, "sky, grass", "both")


@pytest.mark.parametrize("size", [(1, 64), (64, 1), (2, 128), (10, 640), (1, 1)])
def test_images_at_the_limit_run_at_the_smallest_model_sizes(segmenter, size):
    """Up to MAX_ASPECT every method runs, even at the smallest SAM input, working size and CLIP input the
    options allow (the sizes at which a short side shrinks most)."""
    image = np.full((*size, 3), 128, dtype=np.uint8)
    image[: max(1, size[0] // 2)] = (200, 30, 30)
    opts = segmenter.config.options.with_overrides(sam_input_size=64, max_side=32, clip_size=32)
    result = segmenter.segment(image, "sky, grass", "both", options=opts)
    assert result.methods["one-pass"].label_map.shape == size and not result.pending


def test_the_cli_names_a_narrow_image_and_goes_on(tmp_path, capsys):
    from deop.commands import main

    Image.fromarray(np.full((2, 20000, 3), 128, dtype=np.uint8)).save(tmp_path / "strip.png")
    Image.fromarray(np.full((60, 80, 3), 128, dtype=np.uint8)).save(tmp_path / "fine.png")
    code = main(["segment", str(tmp_path / "strip.png"), str(tmp_path / "fine.png"), "--classes", "sky",
                 "--method", "one-pass", "--out", str(tmp_path / "out"), "--random-weights", "--device", "cpu",
                 "--sam", "tiny", "--points-per-side", "4", "--max-side", "256", "--clip-size", "224"])
    err = capsys.readouterr().err
    assert code == 1 and "strip.png: the image is too narrow to segment: 20000 x 2 pixels" in err
    assert "internal error" not in err and (tmp_path / "out" / "fine.json").exists()
