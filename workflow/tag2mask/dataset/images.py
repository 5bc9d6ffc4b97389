"""Reading images as RGB uint8 arrays, whatever their mode (grayscale, CMYK, alpha, 16-bit)."""

import warnings

import numpy as np
from PIL import Image, ImageFile

from ..core.errors import InputError

# A decompression bomb is refused by our own size policy, not by PIL's warning.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageDecodeError(InputError):
    """The file exists but is not a decodable image (corrupt, truncated, unknown format)."""


def to_rgb(img):
    """Convert any PIL image to RGB; returns (image, original mode)."""
    mode = img.mode
    if mode == "RGB":
        return img, mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB"), mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Composite onto white, as a viewer would show it.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB"), mode
    return img.convert("RGB"), mode


def image_size(path):
    """(width, height) after decoding the whole image, so corrupt files are caught here."""
    with open_image(path) as img:
        return img.size


def open_image(path):
    """Open and fully decode an image; raise ImageDecodeError naming the file."""
    try:
        img = Image.open(path)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
        return img
    except FileNotFoundError:
        raise InputError(path, "image file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(path, f"cannot decode image ({e})") from None


def load_rgb(path):
    """The image as an RGB uint8 array [H, W, 3]."""
    with open_image(path) as img:
        rgb, _ = to_rgb(img)
        return np.asarray(rgb, dtype=np.uint8).copy()
