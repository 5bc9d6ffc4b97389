"""Class peaks and their peak response maps (PRM, Zhou et al. 2018), written to a peaks store.

Per image (resized to the classifier's square input, as in training):
  1. one forward pass: raw class maps [C, h, w] and class scores by peak stimulation;
  2. the classes to look at: the image's tags (default, the papers' train-set setting) or the
     classes the classifier predicts (score >= `score_threshold`);
  3. peaks of those classes on the class maps bilinearly upsampled x `upsample` (PRM: 8):
     local maxima of a `window` (the classifier's) that reach its filter (median) and
     `peak_threshold` on the raw map value; with `keep_best_peak` each class keeps its
     strongest peak even below the threshold; at most `max_peaks` per image, strongest first;
  4. all peaks' response maps in one batched backward pass (`tag2mask.peaks.prm`), at the input
     image (PRM) or at the classifier layer `response_layer`, upsampled to the input.
An image without any peak is written with num_peaks = 0 and counted, never an error.

Store layout (kind "peaks"): docs/formats.md. Coordinates are image pixels (row, col) of
pixel centres. A class-map cell j of the stride-s classifier lies at input pixel s * j (not at
the centre of an s-pixel block, tag2mask.peaks.grid); the stored class maps are resampled with that
geometry, and the response maps are at the input's pixels.
"""

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..classifier.cams import multiscale_class_maps, resized_input
from ..classifier.peak_stimulation import peak_mask
from ..core.config import digest
from ..core.errors import InputError
from ..core.store import StoreWriter, image_key
from ..dataset.images import load_rgb
from .grid import cell_to_input, input_to_image, layer_stride, resample, upsampled_to_cell
from .prm import PeakBackprop

log = logging.getLogger(__name__)

KIND = "peaks"
# Options that do not change the store's contents (left out of its config digest).
NOT_IN_DIGEST = ("panels", "device", "chunk")


def options_digest(options):
    return digest({k: v for k, v in options.items() if k not in NOT_IN_DIGEST})


def resolve_response_layer(value, backbone):
    """peaks.response_layer for a classifier with `backbone`: a mapping picks the backbone's
    entry (None, the input, for a backbone not in it); a string or None is used as it is."""
    if isinstance(value, dict):
        return value.get(backbone)
    return value


def map_shape(height, width, map_size):
    """(h, w) of the stored maps: longest side map_size, the image's aspect ratio."""
    scale = map_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def to_image_pixels(rows_cols, grid_hw, image_hw):
    """Pixel (row, col) centres of a grid_hw pixel grid spanning the image (the resized input,
    a resized map) -> float image pixels (row, col). Not for class-map cells: peak_pixels."""
    rc = np.asarray(rows_cols, np.float64).reshape(-1, 2)
    return input_to_image(rc, grid_hw, image_hw).astype(np.float32)


def peak_pixels(peaks_yx, upsample, stride, cells_hw, input_hw, image_hw):
    """Peak (row, col) on the class maps (cells_hw cells) upsampled x `upsample` -> float32
    image pixels: the upsampled pixel's cell coordinate, cell j at input pixel stride * j,
    input to image. Upsampled pixels beyond the first or last cell repeat its value (a border
    plateau): they are that cell."""
    cells = upsampled_to_cell(np.asarray(peaks_yx).reshape(-1, 2), upsample)
    cells = np.clip(cells, 0, np.asarray(cells_hw) - 1)
    return input_to_image(cell_to_input(cells, stride), input_hw, image_hw).astype(np.float32)


def first_of_plateaus(maps, mask, window):
    """Keep one peak per plateau: drop a peak when an equal-valued peak lies earlier in raster
    order within its window. Bilinear upsampling makes flat blocks at the map borders (and a
    constant map is all plateau), where every pixel is a window maximum."""
    r = window // 2
    padded_mask = F.pad(mask, (r, r, r, r))
    padded = F.pad(maps, (r, r, r, r))
    h, w = maps.shape[-2:]
    duplicate = torch.zeros_like(mask)
    for dy in range(-r, 1):
        for dx in range(-r, r + 1):
            if dy == 0 and dx >= 0:
                break
            m = padded_mask[..., r + dy:r + dy + h, r + dx:r + dx + w]
            v = padded[..., r + dy:r + dy + h, r + dx:r + dx + w]
            duplicate |= m & (v == maps)
    return mask & ~duplicate


def select_peaks(upsampled, classes, options, window, peak_filter):
    """Peaks (c, y, x) [P, 3] and their values [P] of `classes` on upsampled maps [1, C, H, W]:
    above peak_threshold and relative_threshold x their class's best (plus each class's best
    with keep_best_peak), strongest first, capped at max_peaks."""
    mask = first_of_plateaus(upsampled, peak_mask(upsampled, window, peak_filter), window)
    all_peaks = mask.nonzero()[:, 1:]  # (c, y, x)
    if len(classes) == 0 or len(all_peaks) == 0:
        return all_peaks[:0], upsampled.new_zeros(0)
    wanted = torch.zeros(upsampled.shape[1], dtype=torch.bool, device=all_peaks.device)
    wanted[torch.as_tensor(classes, dtype=torch.long, device=all_peaks.device)] = True
    peaks = all_peaks[wanted[all_peaks[:, 0]]]
    values = upsampled[0, peaks[:, 0], peaks[:, 1], peaks[:, 2]]
    best = torch.full((upsampled.shape[1],), -torch.inf, dtype=values.dtype,
                      device=values.device)
    best = best.scatter_reduce(0, peaks[:, 0], values, "amax")[peaks[:, 0]]  # class's best
    keep = (values >= options["peak_threshold"]) & (
        values >= options["relative_threshold"] * best.clamp(min=0))
    if options["keep_best_peak"]:
        keep |= values == best
    peaks, values = peaks[keep], values[keep]
    order = torch.argsort(values, descending=True, stable=True)[:options["max_peaks"]]
    return peaks[order], values[order]


def resize_normalised(maps, shape):
    """Response maps [P, H, W] -> [P, h, w] (antialiased bilinear), each summing to 1 again."""
    if len(maps) == 0:
        return maps.new_zeros((0,) + tuple(shape))
    r = F.interpolate(maps[:, None], size=shape, mode="bilinear", align_corners=False,
                      antialias=True)[:, 0].clamp(min=0)
    total = r.flatten(1).sum(1).view(-1, 1, 1)
    return torch.where(total > 0, r / total.clamp(min=1e-30), r)


def multiscale_maps(model, rgb, input_size, options, stride, cells_hw, shape):
    """Raw class maps averaged over `scales` and `flip` (PRM and IRNet average them at
    inference): on the cells of the scale-1 class maps, upsampled x `upsample` as the single
    pass's are (peaks are found there, border plateaus included) [1, C, H, W]; and on the
    pixels of the stored maps [C, *shape]."""
    cells = [torch.arange(n, dtype=torch.float64) * stride for n in cells_hw]
    stored = [(torch.arange(n, dtype=torch.float64) + 0.5) * input_size / n - 0.5 for n in shape]
    on_cells, on_store_grid = multiscale_class_maps(
        model, rgb, input_size, options["scales"], options["flip"],
        device=model.head.weight.device, positive=False,
        pixels_yx=[tuple(cells), tuple(stored)])
    upsampled = F.interpolate(on_cells[None], scale_factor=options["upsample"], mode="bilinear",
                              align_corners=False)
    return upsampled, on_store_grid


def image_peaks(model, rgb, tags, options, device, input_size, score_upsample=1):
    """The arrays the store keeps for one image. Class scores are computed as in the
    classifier's training and val scoring (its own upsample factor, `score_upsample`)."""
    height, width = rgb.shape[:2]
    x = resized_input(rgb, input_size, device)
    pb = PeakBackprop(model, x, upsample=options["upsample"], layer=options["response_layer"])
    scores = model.scores(pb.class_maps, score_upsample)[0].float()
    if options["classes"] == "tags":
        classes = sorted(tags)
    else:
        classes = torch.nonzero(scores >= options["score_threshold"]).flatten().tolist()
    shape = map_shape(height, width, options["map_size"])
    stride = layer_stride(input_size, pb.class_maps.shape[-1])
    single_pass = list(options["scales"]) == [1.0] and not options["flip"]
    if single_pass:
        peak_maps, stored_maps = pb.upsampled_maps, None
    else:  # peaks on the averaged maps; response maps of the base pass at those peaks
        peak_maps, stored_maps = multiscale_maps(model, rgb, input_size, options, stride,
                                                 pb.class_maps.shape[-2:], shape)
        peak_maps = peak_maps.to(pb.upsampled_maps.device)
    peaks, values = select_peaks(peak_maps, classes, options, model.peak_window,
                                 model.peak_filter)
    responses = pb.response_maps(peaks, chunk=options["chunk"])
    pb.release()
    in_hw = responses.shape[-2:] if len(responses) else x.shape[-2:]
    argmax = responses.flatten(1).argmax(1) if len(responses) else peaks.new_zeros(0)
    argmax_rc = torch.stack([argmax // in_hw[1], argmax % in_hw[1]], 1) if len(responses) \
        else peaks.new_zeros((0, 2))
    if not classes:
        class_maps = pb.class_maps.new_zeros((0,) + shape)
    elif single_pass:
        class_maps = resample(pb.class_maps[:, classes].float(), stride, x.shape[-2:], shape)[0]
    else:
        class_maps = stored_maps[classes]
    arrays = {
        "peak_class": peaks[:, 0].cpu().numpy().astype(np.int16),
        "peak_yx": peak_pixels(peaks[:, 1:].cpu().numpy(), options["upsample"], stride,
                               pb.class_maps.shape[-2:], x.shape[-2:], (height, width)),
        "peak_value": values.float().cpu().numpy().astype(np.float32),
        "response_maps": resize_normalised(responses.float(), shape).cpu().numpy()
        .astype(np.float16),
        "response_argmax_yx": to_image_pixels(argmax_rc.cpu().numpy(), in_hw, (height, width)),
        "map_classes": np.asarray(classes, np.int16),
        "class_maps": class_maps.cpu().numpy().astype(np.float16),
        "class_scores": scores.cpu().numpy().astype(np.float32),
    }
    return arrays


def extract(records, manifest, model, options, out_path, device, input_size, panel_dir=None,
            panel_indices=(), progress=True, root_attrs=None, score_upsample=1):
    """Write the peaks store of `records` (manifest ImageRecords) to out_path.

    panel_indices: positions in `records` that also get a panel PNG in panel_dir.
    Returns the stats dict (images, images_without_peaks, peaks).
    """
    from ..core import panels  # PIL drawing; imported here so extraction alone does not need it

    stats = {"images": 0, "images_without_peaks": 0, "peaks": 0}
    panel_indices = set(panel_indices)
    attrs = {"map_size": options["map_size"], "upsample": options["upsample"],
             "response_layer": options["response_layer"] or "input",
             "peak_threshold": options["peak_threshold"], "classes": options["classes"],
             "input_size": input_size, **(root_attrs or {})}
    with StoreWriter(out_path, KIND, manifest.classes, config_digest=options_digest(options),
                     attrs=attrs) as w:
        for i, rec in enumerate(tqdm(records, desc="peaks", unit="image", mininterval=5,
                                     disable=not progress)):
            rgb = load_rgb(rec.path)
            if rgb.shape[:2] != (rec.height, rec.width):
                raise InputError(rec.path, f"image is {rgb.shape[1]}x{rgb.shape[0]}, the "
                                           f"manifest says {rec.width}x{rec.height}")
            arrays = image_peaks(model, rgb, manifest.label_indices(rec), options, device,
                                 input_size, score_upsample)
            n = len(arrays["peak_class"])
            stats["images"] += 1
            stats["peaks"] += n
            if n == 0:
                stats["images_without_peaks"] += 1
                log.info("%s: no peak (tags %s)", rec.id, list(rec.labels))
            w.add(rec.id, rec.height, rec.width, arrays, attrs={"num_peaks": n})
            if panel_dir is not None and i in panel_indices:
                panels.peaks_panel(rgb, arrays, manifest.classes,
                                   Path(panel_dir) / f"{image_key(rec.id)}.png")
        for k, v in stats.items():
            w.file.attrs[f"count_{k}"] = v
    log.info("%d images, %d peaks (%.2f per image), %d images without any peak",
             stats["images"], stats["peaks"], stats["peaks"] / max(stats["images"], 1),
             stats["images_without_peaks"])
    return stats
