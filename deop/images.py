"""Robust image loading: whatever a user hands in becomes an HxWx3 uint8 RGB array, or one clear ImageError.

Users upload phone photos (EXIF-rotated), screenshots with alpha, scans in CMYK, 16-bit PNGs, truncated
downloads and the odd decompression bomb. Each of these either loads correctly or fails with a one-line
message, never a PIL traceback. The pixel limit is checked from the header before anything is decoded and
does not depend on (or change) PIL's global ``Image.MAX_IMAGE_PIXELS``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from pathlib import Path
from typing import IO, Union

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageError

MAX_PIXELS = 50_000_000
# The long side may be at most this many times the short side. The models see the image scaled (the working
# size, SAM's input, CLIP's), and past this a short side can round to zero pixels at one of them (SAM at its
# smallest input, 64 px, keeps a short side of at least one pixel up to about 128:1 of the working image, which
# rounding at the working size can make up to 1.5x narrower than the upload).
MAX_ASPECT = 64
ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes], Image.Image, np.ndarray]




def load_image(source: ImageSource, max_pixels: int = MAX_PIXELS, display_name: str | None = None) -> np.ndarray:
    """Decode a path, bytes, file object, PIL image or array to a C-contiguous HxWx3 uint8 array.

    display_name: how errors name the file instead of its path (a server names the user's upload, not
    its own temporary folder).
    """
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels)
    if isinstance(source, Image.Image):
        return _from_pil(source, max_pixels, "the image")
    img, name = _open(source, max_pixels, display_name)
    with img:
        return _from_pil(img, max_pixels, name)


def _too_large(pixels: str, max_pixels: int) -> ImageError:
    return ImageError(f"image is too large: {pixels} pixels (limit {max_pixels / 1e6:g} megapixels)")


def _open(source: object, max_pixels: int, display_name: str | None = None) -> tuple[Image.Image, str]:
    """Open lazily: only the header is read here, so the size can be checked before decoding."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = display_name or str(path)
        if not path.exists():
            raise ImageError(f"no such file: {name}")
        if not path.is_file():
            raise ImageError(f"not a file: {name}")
        if path.stat().st_size == 0:
            raise ImageError(f"the file is empty: {name}")
        fp: Path | io.BytesIO = path
    else:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
        elif hasattr(source, "read"):
            data = source.read()
            if not isinstance(data, (bytes, bytearray)):
                raise ImageError("the file object must be opened in binary mode ('rb')")
        else:
            raise ImageError(f"cannot read an image from a {type(source).__name__}")
        if not data:
            raise ImageError("the file is empty")
        fp, name = io.BytesIO(data), display_name or "the image data"
    with warnings.catch_warnings():
        # Our own limit (checked in _from_pil) replaces PIL's warning; its hard error is still caught below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(fp), name
        except UnidentifiedImageError as exc:
            raise ImageError(f"not an image file: {name}") from exc
        except Image.DecompressionBombError as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))
            raise _too_large(found.group(1) if found else "too many", max_pixels) from exc
        except OSError as exc:
            raise ImageError(f"cannot read {name}: {exc.strerror or exc}") from exc
        except Exception as exc:  # a plugin tripping over a malformed header
            raise ImageError(f"the image file is truncated or corrupt: {name} ({exc})") from exc


def _from_pil(img: Image.Image, max_pixels: int, name: str) -> np.ndarray:
    if isinstance(img, ImageFile.StubImageFile):  # HDF5, GRIB, BUFR: PIL recognises them but has no pixels
        raise ImageError(f"not an image file: {name} (a {img.format} data file)")
    width, height = img.size
    if width * height > max_pixels:
        raise _too_large(f"{width}x{height}", max_pixels)
    if width == 0 or height == 0:
        raise ImageError(f"the image has zero size ({width}x{height})")
    try:
        img.load()  # force the full decode here, so truncation surfaces as an ImageError
    except Exception as exc:
        raise ImageError(f"the image file is truncated or corrupt: {name} ({exc})") from exc
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a mangled EXIF block: the pixels are fine, only the orientation hint is lost
        pass
    return np.ascontiguousarray(_pil_to_rgb(img))


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        return _gray_to_rgb(_wide_to_uint8(np.asarray(img)))
    if mode in ALPHA_MODES or "transparency" in img.info:
        return _flatten_alpha(np.asarray(img.convert("RGBA")))
    if mode == "LAB":  # PIL's plain convert() treats L*a*b* as raw channels; a colour transform is needed
        lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
        return np.array(ImageCms.applyTransform(img, ImageCms.buildTransform(lab, srgb, "LAB", "RGB")))
    return np.array(img if mode == "RGB" else img.convert("RGB"))


def _wide_to_uint8(arr: np.ndarray) -> np.ndarray:
    """8 bits from 16/32-bit or float data by its actual range: a wide container of 8-bit values is kept."""
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr.astype(np.float64))
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0 and hi <= 1:
            return np.rint(arr * 255).astype(np.uint8)
        if lo >= 0 and hi <= 255:
            return np.rint(arr).astype(np.uint8)
        return _stretch(arr, lo, hi)
    lo, hi = int(arr.min()), int(arr.max())
    if lo >= 0 and hi <= 255:
        return arr.astype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return (arr.astype(np.uint32) >> 8).astype(np.uint8)
    return _stretch(arr.astype(np.float64), lo, hi)


def _stretch(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.rint((arr - lo) * 255.0 / (hi - lo)).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _flatten_alpha(rgba: np.ndarray) -> np.ndarray:
    """Composite onto white: transparent areas of logos and cut-outs are meant to be background, not black."""
    alpha = rgba[..., 3:4].astype(np.uint32)
    rgb = rgba[..., :3].astype(np.uint32)
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _from_array(arr: np.ndarray, max_pixels: int) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ImageError(f"unsupported array shape {arr.shape}: expected HxW, HxWx1, HxWx3 or HxWx4")
    height, width = arr.shape[:2]
    if height == 0 or width == 0:
        raise ImageError(f"the image has zero size ({width}x{height})")
    if height * width > max_pixels:
        raise _too_large(f"{width}x{height}", max_pixels)
    arr = _array_to_uint8(arr)
    if arr.ndim == 2:
        arr = _gray_to_rgb(arr)
    elif arr.shape[2] == 4:
        arr = _flatten_alpha(arr)
    return np.ascontiguousarray(arr)


def _array_to_uint8(arr: np.ndarray) -> np.ndarray:
    """uint8 as is, bool as 0/255, floats as [0, 1], uint16 by its range; other integers only if lossless."""
    kind = arr.dtype.kind
    if arr.dtype == np.uint8:
        return arr
    if kind == "b":
        return arr.astype(np.uint8) * 255
    if kind == "f":
        return np.rint(np.clip(np.nan_to_num(arr.astype(np.float32)), 0, 1) * 255).astype(np.uint8)
    if arr.dtype == np.uint16:
        return _wide_to_uint8(arr)
    if kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 255:
            return arr.astype(np.uint8)
        raise ImageError(f"{arr.dtype} array values must lie in 0..255 (found {lo}..{hi}); "
                         "pass uint8, uint16, bool or floats in [0, 1]")
    raise ImageError(f"unsupported array dtype {arr.dtype}: pass uint8, uint16, bool or floats in [0, 1]")


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def collect_images(inputs: list[str] | tuple[str, ...]) -> tuple[list[Path], list[str]]:
    """Image files from files and folders (folders non-recursive, sorted), and errors for missing paths."""
    files, errors = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                errors.append(f"{path}: no image files in this folder")
            files += found
        elif path.exists():
            files.append(path)
        else:
            errors.append(f"{path}: no such file or folder")
    return files, errors


def check_proportions(size: tuple[int, int]) -> None:
    """An ImageError naming the limit for an image (height, width) too narrow for the models (``MAX_ASPECT``):
    the CLI, the app and the API all refuse it with this message, before any model runs."""
    height, width = size
    if max(height, width) > MAX_ASPECT * min(height, width):
        raise ImageError(f"the image is too narrow to segment: {width} x {height} pixels, its long side more than "
                         f"{MAX_ASPECT} times its short side (the limit: scaled to the models' input sizes, its "
                         "short side would shrink below one pixel); crop it, or pad its short side")


def resize_max_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale so the longer side is ``max_side``; an image already small enough is returned as is."""
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    height, width = image.shape[:2]
    if max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (min(max_side, max(1, round(width * scale))), min(max_side, max(1, round(height * scale))))
    return np.array(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0))


def nearest_indices(n_from: int, n_to: int) -> np.ndarray:
    """Source index of each of `n_to` positions when `n_from` positions are resized by nearest neighbour:
    the one formula every label map, patch grid and mask in the package is resized with."""
    return np.arange(n_to, dtype=np.int64) * n_from // n_to


def nearest_resize(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an integer map by index arithmetic (no interpolation of labels)."""
    h, w = array.shape[:2]
    if (h, w) == tuple(shape):
        return array
    return array[nearest_indices(h, shape[0])[:, None], nearest_indices(w, shape[1])[None, :]]


def image_key(image: np.ndarray) -> str:
    """A content hash for caches: equal pixels give equal keys whatever object or memory layout holds them."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.shape}|{image.dtype.str}".encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()
