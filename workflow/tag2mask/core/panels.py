"""Pictures for looking at what a stage did: heat maps, mask outlines, points, tiled panels.

General drawing helpers (PIL + numpy, no matplotlib) that any stage can use, plus the retrieval
panel: per peak, its response map over the image with the proposal chosen for it, and the final
pseudo masks. Written as PNG files atomically.
"""

import numpy as np
from PIL import Image, ImageDraw

from .atomic import atomic_path

# A perceptually ordered dark-to-bright ramp (black, purple, red, orange, yellow, white).
_RAMP = np.array([[0, 0, 0], [60, 10, 110], [180, 30, 80], [240, 110, 20], [250, 220, 60],
                  [255, 255, 255]], np.float32)


def color(i):
    """A stable, clearly visible RGB colour for index i (instances, classes)."""
    rng = np.random.default_rng(int(i) * 7919 + 11)
    return rng.integers(60, 256, 3).astype(np.uint8)


def heat(values):
    """float [h, w] -> uint8 RGB [h, w, 3] on the ramp, scaled to the map's own maximum."""
    v = np.asarray(values, np.float32)
    top = float(v.max()) if v.size and v.max() > 0 else 1.0
    x = np.clip(v / top, 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_RAMP) - 2)
    f = (x - lo)[..., None]
    return ((1 - f) * _RAMP[lo] + f * _RAMP[lo + 1]).astype(np.uint8)


def resize(rgb_or_map, height, width, nearest=False):
    """Resize an RGB uint8 [h, w, 3] or float [h, w] array to (height, width)."""
    a = np.asarray(rgb_or_map)
    mode = "F" if a.ndim == 2 else None
    img = Image.fromarray(a.astype(np.float32) if mode else a, mode)
    img = img.resize((width, height), Image.Resampling.NEAREST if nearest
                     else Image.Resampling.BILINEAR)
    return np.asarray(img)


def blend(image, over, alpha=0.5, where=None):
    """alpha-blend `over` onto `image` (both uint8 RGB), optionally only where a mask is set."""
    out = image.astype(np.float32)
    mix = (1 - alpha) * out + alpha * over.astype(np.float32)
    if where is None:
        out = mix
    else:
        out[where] = mix[where]
    return out.clip(0, 255).astype(np.uint8)


def outline(mask):
    """Boundary pixels of a bool mask (4-neighbourhood)."""
    m = np.asarray(mask, bool)
    inner = m.copy()
    inner[1:] &= m[:-1]
    inner[:-1] &= m[1:]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    return m & ~inner


def draw_masks(image, masks, colors, alpha=0.45, outlines=None):
    """Masks tinted in their colours over a uint8 RGB image, outlined in `outlines` (one
    colour per mask; default: the tint colours)."""
    out = image.copy()
    for m, c, o in zip(masks, colors, colors if outlines is None else outlines):
        out = blend(out, np.broadcast_to(np.asarray(c, np.uint8), out.shape), alpha, where=m)
        out[outline(m)] = o
    return out


def draw_points(image, points, colors, radius=None, width=1):
    """Crosses (black-edged, in their colours, lines `width` wide) at (row, col) points;
    returns uint8 RGB."""
    img = Image.fromarray(np.asarray(image, np.uint8))
    draw = ImageDraw.Draw(img)
    r = radius or max(2, round(max(image.shape[:2]) / 40))
    for (y, x), c in zip(points, colors):
        c = tuple(int(v) for v in c)
        for w, col in ((2 * width + 1, (0, 0, 0)), (width, c)):
            draw.line([(x - r, y), (x + r, y)], fill=col, width=w)
            draw.line([(x, y - r), (x, y + r)], fill=col, width=w)
    return np.asarray(img)


def tile(images, captions, columns=4, min_side=128, caption_height=26):
    """A grid of equally sized uint8 RGB tiles with one- or two-line captions under each."""
    h, w = images[0].shape[:2]
    f = max(1.0, min_side / max(h, w))  # small images are scaled up to be seen
    th, tw = round(h * f), round(w * f)
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * (tw + 4), rows * (th + caption_height + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (im, cap) in enumerate(zip(images, captions)):
        x, y = (i % columns) * (tw + 4) + 2, (i // columns) * (th + caption_height + 4) + 2
        sheet.paste(Image.fromarray(im).resize((tw, th), Image.Resampling.NEAREST), (x, y))
        draw.multiline_text((x, y + th + 1), cap, fill=(0, 0, 0), spacing=1)
    return sheet


def save_png(img, path):
    """Write a PIL image as PNG atomically."""
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", optimize=True)


def retrieval_panel(image, peaks, arrays, inputs, selection, class_names, path, max_peaks=11):
    """One PNG per image: the pseudo masks over the image, then per peak its response map over
    the image with the proposal chosen for it (white outline: kept; grey: merged into another
    candidate's instance; none: no valid proposal). Grid candidates (method consensus) are
    not drawn one by one.

    image: uint8 RGB [H, W, 3]; peaks: the peaks-store entry; arrays: the pseudo-mask arrays
    written for the image; inputs, selection: tag2mask.retrieval.select WorkingInputs and Selection.
    """
    from . import masks as mask_rle

    height, width = image.shape[:2]
    final = mask_rle.decode(arrays["masks"], height, width)
    labels = np.asarray(arrays["labels"])
    tiles = [draw_points(draw_masks(image, final, [color(100 + c) for c in labels]),
                         np.asarray(arrays["peak_yx"]).reshape(-1, 2),
                         [color(100 + c) for c in labels])]
    captions = [f"{len(final)} pseudo masks\n" + ", ".join(
        f"{class_names[c]} {s:.2f}" for c, s in zip(labels[:3], arrays["scores"][:3]))]
    kept = set(selection.kept.tolist())
    peak_yx = np.asarray(peaks["peak_yx"]).reshape(-1, 2)
    for p in range(min(len(peak_yx), max_peaks)):
        r = resize(inputs.response[p].numpy(), height, width)
        t = blend(image, heat(r), 0.6)
        chosen = selection.proposal[p]
        if chosen >= 0:
            m = resize(inputs.masks[chosen].numpy().astype(np.uint8), height, width,
                       nearest=True).astype(bool)
            t[outline(m)] = (255, 255, 255) if p in kept else (150, 150, 150)
        cls = int(peaks["peak_class"][p])
        t = draw_points(t, peak_yx[p:p + 1], [color(100 + cls)])
        into = selection.merged_into[p]
        fate = ("kept" if p in kept else f"-> {'peak' if into < len(peak_yx) else 'grid'} {into}"
                if into >= 0 else "dropped" if chosen >= 0 else "no proposal")
        score = f"{selection.score[p]:.2f}" if chosen >= 0 else "-"
        tiles.append(t)
        captions.append(f"peak {p} {class_names[cls]}\nprop {chosen} s={score} {fate}")
    save_png(tile(tiles, captions), path)


def peaks_panel(image, peaks, class_names, path, max_peaks=11):
    """One PNG per image: the image with its peaks (crosses in class colours), each stored class
    map over the image with that class's peaks, then per peak (strongest first) its response
    map over the image with the peak (cross) and the response argmax (white dot).

    image: uint8 RGB [H, W, 3]; peaks: the arrays of one image of a peaks store.
    """
    height, width = image.shape[:2]
    peak_class = np.asarray(peaks["peak_class"], int)
    peak_yx = np.asarray(peaks["peak_yx"], np.float32).reshape(-1, 2)
    values = np.asarray(peaks["peak_value"], np.float32)
    colours = [color(100 + c) for c in peak_class]
    tiles = [draw_points(image, peak_yx, colours)]
    captions = [f"{len(peak_class)} peaks\n" + ", ".join(
        class_names[c] for c in np.asarray(peaks["map_classes"], int))]
    for k, c in enumerate(np.asarray(peaks["map_classes"], int)):
        cmap = np.asarray(peaks["class_maps"][k], np.float32)
        t = blend(image, heat(resize(cmap - cmap.min(), height, width)), 0.6)
        mine = peak_class == c
        tiles.append(draw_points(t, peak_yx[mine], [color(100 + c)] * int(mine.sum())))
        captions.append(f"class map {class_names[c]}\nmax {cmap.max():.2f}, {int(mine.sum())} peaks")
    argmax = peaks.get("response_argmax_yx")
    for p in range(min(len(peak_class), max_peaks)):
        r = resize(np.asarray(peaks["response_maps"][p], np.float32), height, width)
        t = np.array(draw_points(blend(image, heat(r), 0.6), peak_yx[p:p + 1], colours[p:p + 1]))
        if argmax is not None:
            y, x = np.clip(np.round(argmax[p]).astype(int), 0, [height - 1, width - 1])
            t[max(0, y - 1):y + 2, max(0, x - 1):x + 2] = 255
        tiles.append(t)
        captions.append(f"peak {p} {class_names[peak_class[p]]}\nvalue {values[p]:.2f}")
    save_png(tile(tiles, captions), path)
