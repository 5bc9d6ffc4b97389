"""Downscaling images too large to decode whole, with memory bounded by the target size.

`downscaled_rgb(img, path, size)` turns an opened (not yet loaded) PIL image into an RGB copy
of `size` = (width, height):
- JPEG is decoded at 1/2, 1/4 or 1/8 scale (PIL's draft mode: DCT scaling), never below `size`;
- a non-interlaced PNG with 8-bit samples (grey, RGB, palette, with or without alpha) or
  16-bit grey is decoded a band of rows at a time (`png_bands`);
- anything else (TIFF, WebP, interlaced or 16-bit colour PNG, ...) is decoded whole.
The decoded rows are box-averaged (`Image.reduce`, band by band) to less than twice the target
size per side, then resized to exactly `size` (Lanczos). Peak memory is then a few bands plus
the reduced image (at most 4x the target's pixels), not the original's w x h x 4 bytes.

How a PNG is read in bands: its zlib stream is inflated a band of rows at a time; each band,
preceded by the previous band's last decoded row (filter type None, so the Up / Average /
Paeth filters of the band's first row see the right prior row), is wrapped in a small PNG of
its own that PIL decodes. PIL does all unfiltering and unpacking, so the pixels are exactly
those of a whole-image decode.
"""

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .images import ImageDecodeError, to_rgb

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BAND_BYTES = 4 << 20  # inflated bytes per band
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def downscaled_rgb(img, path, size):
    """An RGB PIL image of `size` from the opened image `img` (see the module docstring)."""
    nw, nh = size
    if img.format == "JPEG":
        img.draft(None, (nw, nh))  # img.size becomes the reduced size
    w, h = img.size
    factor = max(1, min(w // nw, h // nh))
    header = read_png_header(path) if img.format == "PNG" else None
    if header is not None and header.streamable:
        bands = png_bands(path, header, rows=band_rows(w * header.pixel_bytes, factor))
    else:
        _load(img, path)
        # to_rgb scales a 32-bit image by its maximum: convert such an image whole
        rows = h if img.mode == "I" else band_rows(w * 4, factor)
        bands = (img.crop((0, y, w, min(h, y + rows))) for y in range(0, h, rows))
    reduced = Image.new("RGB", (-(-w // factor), -(-h // factor)))
    y = 0
    for band in bands:
        rgb, _ = to_rgb(band)
        reduced.paste(rgb.reduce(factor) if factor > 1 else rgb, (0, y // factor))
        y += band.height
    if y != h:
        raise ImageDecodeError(path, f"cannot decode image (only {y} of {h} rows)")
    return reduced.resize((nw, nh), Image.Resampling.LANCZOS)


def band_rows(row_bytes, factor):
    """Rows per band: about BAND_BYTES, a multiple of `factor` so that band-wise box
    averaging equals whole-image box averaging."""
    rows = max(1, BAND_BYTES // max(1, row_bytes))
    return max(factor, rows // factor * factor)


def _load(img, path):
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(path, f"cannot decode image ({e})") from None


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlace: int
    palette_chunks: bytes  # PLTE and tRNS chunks, copied into each band's PNG
    idat_offset: int  # file offset of the first IDAT chunk

    @property
    def pixel_bytes(self):
        return _CHANNELS[self.colour_type] * self.bit_depth // 8

    @property
    def streamable(self):
        """Bands need a decoded row to be turned back into the PNG's raw bytes: true for 8-bit
        samples and 16-bit grey (PIL keeps 16-bit colour only as 8-bit)."""
        return (self.interlace == 0 and self.colour_type in _CHANNELS
                and (self.bit_depth == 8 or (self.bit_depth == 16 and self.colour_type == 0)))


def read_png_header(path):
    """The PngHeader of a PNG file (chunks before the first IDAT), or None if it is not one."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != PNG_SIGNATURE:
                return None
            ihdr, palette = None, b""
            while True:
                head = f.read(8)
                if len(head) < 8:
                    raise ImageDecodeError(path, "cannot decode image (PNG without image data)")
                length, kind = struct.unpack(">I4s", head)
                if kind == b"IDAT":
                    break
                if kind in (b"IHDR", b"PLTE", b"tRNS"):
                    data = f.read(length)
                    f.seek(4, 1)  # CRC
                    if kind == b"IHDR":
                        ihdr = data
                    else:
                        palette += _chunk(kind, data)
                else:
                    f.seek(length + 4, 1)
            offset = f.tell() - 8
    except OSError as e:
        raise ImageDecodeError(path, f"cannot read image ({e})") from None
    if ihdr is None or len(ihdr) != 13:
        raise ImageDecodeError(path, "cannot decode image (PNG without a valid IHDR)")
    w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
    return PngHeader(w, h, depth, colour, interlace, palette, offset)


def png_bands(path, header, rows):
    """The PNG's pixels as consecutive PIL images of `rows` rows each (the last may be
    shorter), in PIL's mode for the file (L, LA, RGB, RGBA, P or I;16)."""
    row_bytes = 1 + header.width * header.pixel_bytes
    want = rows * row_bytes
    inflate = zlib.decompressobj()
    pending, prior, done = bytearray(), None, 0
    try:
        for data in _idat_data(path, header.idat_offset):
            while data and done < header.height:
                pending += inflate.decompress(data, want)
                data = inflate.unconsumed_tail
                if len(pending) >= want:
                    band, prior = _decode_band(path, header, bytes(pending[:want]), prior)
                    del pending[:want]
                    done += band.height
                    yield band
        pending += inflate.flush()
    except zlib.error as e:
        raise ImageDecodeError(path, f"cannot decode image (corrupt PNG data: {e})") from None
    left = min(len(pending) // row_bytes, header.height - done)
    if left:
        band, _ = _decode_band(path, header, bytes(pending[:left * row_bytes]), prior)
        done += band.height
        yield band
    if done < header.height:
        raise ImageDecodeError(path, f"cannot decode image (truncated PNG: {done} of "
                                     f"{header.height} rows)")


def _idat_data(path, offset, piece=1 << 20):
    """The compressed image data: the contents of consecutive IDAT chunks, in pieces."""
    with open(path, "rb") as f:
        f.seek(offset)
        while True:
            head = f.read(8)
            if len(head) < 8:
                return
            length, kind = struct.unpack(">I4s", head)
            if kind != b"IDAT":
                return
            while length:
                data = f.read(min(piece, length))
                if not data:
                    return
                length -= len(data)
                yield data
            f.seek(4, 1)  # CRC (zlib's own checksum covers the data)


def _decode_band(path, header, raw, prior):
    """Decode raw (filtered) rows; `prior` is the raw previous row (None for the first band).
    Returns (band image, raw last row)."""
    rows = len(raw) // (1 + header.width * header.pixel_bytes)
    if prior is not None:
        raw = b"\x00" + prior + raw
    n = rows + (prior is not None)
    ihdr = struct.pack(">IIBBBBB", header.width, n, header.bit_depth, header.colour_type, 0, 0, 0)
    png = b"".join([PNG_SIGNATURE, _chunk(b"IHDR", ihdr), header.palette_chunks,
                    _chunk(b"IDAT", zlib.compress(raw, 0)), _chunk(b"IEND", b"")])
    try:
        band = Image.open(io.BytesIO(png))
        band.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(path, f"cannot decode image ({e})") from None
    if prior is not None:
        band = band.crop((0, 1, header.width, n))
    last = np.asarray(band.crop((0, band.height - 1, header.width, band.height)))
    if header.bit_depth == 16:
        last = last.astype(">u2")
    return band, last.tobytes()


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
