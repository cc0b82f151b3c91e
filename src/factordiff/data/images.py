"""Read image files into uint8 arrays, strictly: one place that decides what an image file may be.

``read_image`` returns (H, W, C) uint8 with C = 1 (grayscale), 3 (RGB) or 4 (RGBA, alpha kept; the
caller decides what to do with it). PNG, JPEG and BMP are read with Pillow, ``.tif``/``.tiff`` with
``tifffile``.

Conversions, all lossless except the 16-bit one:

* palette images (Pillow mode ``P``) become RGB, or RGBA when the palette has transparency;
  grayscale with alpha (``LA``) becomes RGBA; CMYK and YCbCr become RGB;
* 16-bit images (PNG mode ``I;16``, TIFF uint16) become uint8 by dividing by 257 and rounding, so
  0 -> 0, 257 * k -> k and 65535 -> 255. (Pillow itself reads 16-bit *RGB* PNGs as 8-bit RGB,
  keeping the high byte; they are accepted as such.)

Rejected, with one line naming the file: 1-bit images, 32-bit integer or floating-point pixels,
signed integers, channel counts other than 1, 3 or 4, and any file that is missing, empty,
truncated, corrupt or not in one of the formats above. EXIF orientation is not applied: pixels are
returned as stored.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from factordiff.errors import FactordiffError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")
PILLOW_FORMATS = ["PNG", "JPEG", "BMP"]
EXPECTED = "expected 8- or 16-bit grayscale, RGB or RGBA"
PROGRESS_MIN_FILES = 200  # below this many files no progress bar is shown

# Pillow modes and what they become: a mode to convert to, or None to keep the pixels as they are.
_PILLOW_MODES: dict[str, str | None] = {
    "L": None,
    "RGB": None,
    "RGBA": None,
    "I;16": None,
    "I;16L": None,
    "I;16B": None,
    "I;16N": None,
    "P": "RGB",
    "PA": "RGBA",
    "LA": "RGBA",
    "La": "RGBA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
}
# Pillow modes refused, with the bit depth they stand for (for the message).
_PILLOW_REJECTED = {"1": "1-bit", "I": "32-bit integer", "F": "32-bit float"}


def read_image(path: Path, scale16: int | None = None) -> np.ndarray:
    """Read one image file as an (H, W, C) uint8 array, C in {1, 3, 4}. 16-bit pixels are divided by
    257 (the full range to 8 bits), or by ``scale16`` and clipped at 255 (a source's own map, e.g.
    cellsim's ``// 64``).

    Raises:
        FactordiffError: the file is missing, empty, truncated, corrupt, of an unsupported format
            or of an unsupported bit depth; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FactordiffError(f"{path}: no such image file")
    if path.stat().st_size == 0:
        raise FactordiffError(f"{path}: empty file (0 bytes); expected an image")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise FactordiffError(
            f"{path}: unsupported image format {suffix or '(no suffix)'!r}; expected one of "
            f"{' '.join(IMAGE_SUFFIXES)}"
        )
    pixels = _read_tiff(path) if suffix in TIFF_SUFFIXES else _read_pillow(path)
    if scale16 and pixels.dtype.kind == "u" and pixels.dtype.itemsize == 2:
        pixels = np.minimum(pixels // scale16, 255).astype(np.uint8)
    return _to_uint8_hwc(pixels, path)


def _read_pillow(path: Path) -> np.ndarray:
    """Decode a PNG, JPEG or BMP file fully (so truncation is caught) and convert its mode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path, formats=PILLOW_FORMATS) as im:
            im.load()
            mode = im.mode
            if mode == "I" and im.format == "PNG":  # older Pillow opens 16-bit grayscale PNGs as "I"
                return np.asarray(im).astype(np.uint16)
            if mode in _PILLOW_REJECTED:
                raise FactordiffError(f"{path}: {_PILLOW_REJECTED[mode]} image (mode {mode!r}); {EXPECTED}")
            if mode not in _PILLOW_MODES:
                raise FactordiffError(f"{path}: unsupported image mode {mode!r}; {EXPECTED}")
            target = _PILLOW_MODES[mode]
            if mode == "P" and "transparency" in im.info:
                target = "RGBA"
            return np.asarray(im.convert(target) if target else im)
    except UnidentifiedImageError:
        raise FactordiffError(
            f"{path}: not a PNG, JPEG or BMP image (unrecognised or corrupt contents)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise FactordiffError(f"{path}: truncated or corrupt image ({_one_line(e)})") from None


def _read_tiff(path: Path) -> np.ndarray:
    """Read the first image series of a TIFF file as (H, W) or (H, W, C)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, pixels = series.axes, series.asarray()
    except Exception as e:  # tifffile raises many types (TiffFileError, ValueError, zlib.error, ...)
        raise FactordiffError(
            f"{path}: truncated or corrupt TIFF ({type(e).__name__}: {_one_line(e)})"
        ) from None
    if axes == "SYX":  # planar configuration: channels first
        return np.moveaxis(pixels, 0, -1)
    if axes in ("YX", "YXS"):
        return pixels
    raise FactordiffError(
        f"{path}: TIFF holds an array of shape {pixels.shape} (axes {axes}); expected one 2-D "
        "image (H, W) or (H, W, C)"
    )


def _to_uint8_hwc(pixels: np.ndarray, path: Path) -> np.ndarray:
    """Check dtype and channels; scale 16-bit to 8-bit; return (H, W, C) uint8."""
    if pixels.dtype.kind == "u" and pixels.dtype.itemsize == 2:
        pixels = np.rint(pixels.astype(np.float64) / 257.0).astype(np.uint8)
    elif pixels.dtype.kind != "u" or pixels.dtype.itemsize != 1:
        raise FactordiffError(f"{path}: {_depth(pixels.dtype)} pixels; {EXPECTED}")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4):
        raise FactordiffError(
            f"{path}: image of shape {pixels.shape}; expected 1 (grayscale), 3 (RGB) or 4 (RGBA) channels"
        )
    return np.array(pixels, dtype=np.uint8, order="C")  # a writable copy in native order


def _depth(dtype: np.dtype) -> str:
    """Describe a pixel dtype for messages: '1-bit', '32-bit float', '16-bit signed integer', ..."""
    if dtype == np.bool_:
        return "1-bit"
    kind = {"f": "float", "i": "signed integer", "u": "integer", "c": "complex"}.get(dtype.kind, str(dtype))
    return f"{dtype.itemsize * 8}-bit {kind}"


def _one_line(e: BaseException) -> str:
    """An exception's message squeezed onto one line."""
    return " ".join(str(e).split()) or type(e).__name__


def read_images(paths: Sequence[Path], labels: Sequence[str] | None = None) -> np.ndarray:
    """Read image files of one size and channel count into an (N, H, W, C) uint8 array.

    The first image sets the expected size and channels. A progress bar (rate and ETA) is shown on a
    terminal when there are at least ``PROGRESS_MIN_FILES`` files.

    Args:
        paths: image files, read in order.
        labels: optional prefix per file for messages (e.g. ``"data.csv row 7"``).

    Raises:
        FactordiffError: no paths, an unreadable file, or a file whose size or channel count differs
            from the first; the message names the file.
    """
    from tqdm import tqdm

    if not paths:
        raise FactordiffError("read_images: no image files given")
    where = [f"{label}: " for label in labels] if labels is not None else [""] * len(paths)
    out: np.ndarray | None = None
    show = len(paths) >= PROGRESS_MIN_FILES and sys.stderr.isatty()
    for i, path in enumerate(tqdm(paths, desc="reading images", unit="img", disable=not show)):
        try:
            img = read_image(path)
        except FactordiffError as e:
            raise FactordiffError(f"{where[i]}{e}") from None
        if out is None:
            out = np.empty((len(paths), *img.shape), np.uint8)
        elif img.shape != out.shape[1:]:
            raise FactordiffError(f"{where[i]}{path}: {_mismatch(img.shape, out.shape[1:], paths[0])}")
        out[i] = img
    assert out is not None
    return out


def _mismatch(shape: tuple[int, ...], expected: tuple[int, ...], first: Path) -> str:
    """Describe how an image's shape differs from the expected one (size first, then channels)."""
    (h, w, c), (eh, ew, ec) = shape, expected
    if (h, w) != (eh, ew):
        return f"image is {w}x{h} pixels; expected {ew}x{eh} like the first image {first}"
    return f"image has {c} channel(s); expected {ec} like the first image {first}"


def composite(array: np.ndarray) -> np.ndarray:
    """An (H, W, C) uint8 image for display: grayscale, RGB and RGBA as they are; 2 or 5+ channels
    (a Cell Painting field: DNA, ER, RNA, AGP, Mito) as RGB with the first channel blue, the mean of
    the next half green and the mean of the rest red."""
    c = array.shape[2] if array.ndim == 3 else 1
    if c in (1, 3, 4):
        return array[..., 0] if array.ndim == 3 and c == 1 else array
    rest = list(range(1, c))
    green, red = rest[: max(1, len(rest) // 2)], rest[max(1, len(rest) // 2) :] or rest
    x = array.astype(np.float32)
    return np.stack([x[..., red].mean(-1), x[..., green].mean(-1), x[..., 0]], -1).round().astype(np.uint8)


def save_png(array: np.ndarray, path: Path, scale: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    img = Image.fromarray(composite(array))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    tmp = path.with_name(path.name + ".tmp.png")
    img.save(tmp)
    tmp.replace(path)
