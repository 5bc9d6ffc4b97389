"""Bad input, one test per item of the checklist, each through the `tag2mask` command line
(cli.main in process, or `python -m tag2mask.cli` / `snakemake` in a subprocess where the
process's own exit status and stderr matter).

Every case ends in one of two ways: exit status 2 with one line "tag2mask <stage>: error:
<file or key>: <problem>" and no traceback, or a logged skip counted in the manifest's stats
(skipped / skipped_files / converted_to_rgb / downscaled). And nothing already written is
lost: a failing stage leaves the previous output at its path unchanged and no partial file.

Checklist -> tests
- corrupt JPEG, truncated PNG ........ test_corrupt_images_are_counted_skips (dataset prepare:
                                       garbage in the data, truncation, a bad header; the
                                       small and the large-image path), test_jpeg_structure_check;
                                       test_image_broken_after_prepare_fails_the_stage_in_one_line
                                       (peaks extract, classifier train with DataLoader workers)
- CMYK / grayscale / RGBA images ..... test_other_colour_modes_are_converted_and_counted (read
                                       end to end by peaks extract)
- 16-bit PNG ......................... same test (values scaled by 1/257), and
                                       test_png_bands_equal_a_whole_decode (16-bit grey in bands)
- 10,000 x 10,000 image .............. test_huge_image_is_downscaled_in_bounded_memory (JPEG,
                                       PNG), test_huge_image_is_refused_under_skip; the band
                                       decoder behind it: test_png_bands_equal_a_whole_decode,
                                       test_banded_downscale_equals_a_whole_decode
- unknown class name in a CSV ........ test_unknown_class_in_csv_is_one_line_and_keeps_the_old_manifest
- empty tag list ..................... test_empty_tag_list_is_a_counted_skip
- image with no GT instance .......... test_coco_image_without_instance_is_a_counted_skip,
                                       test_evaluation_counts_predictions_on_an_image_without_gt
- malformed COCO JSON ................ test_malformed_coco_json_is_one_line,
                                       test_malformed_coco_json_in_a_subprocess
- config, wrong type / unknown key ... test_config_errors_on_the_command_line (YAML file),
                                       test_inline_config_errors_on_the_command_line,
                                       test_config_errors_in_snakemake_name_the_key,
                                       test_schema_descriptions_are_not_split_by_commas
- checkpoint from another class list . test_classifier_of_other_classes_is_refused_by_extract_peaks,
                                       test_maskrcnn_of_other_classes_is_refused_by_predict,
                                       test_training_checkpoint_of_other_classes_is_not_resumed
                                       (classifier train). maskrcnn train: its epoch checkpoints'
                                       identity includes the class list, so another list starts
                                       over as a changed config does
                                       (test_maskrcnn.py::test_changed_config_starts_over), and a
                                       store of other classes is refused
                                       (test_maskrcnn.py::test_dataset_rejects_other_classes)
- beyond the list: a hand-edited manifest (test_malformed_manifest_is_one_line)

Damaged files (issue 14), each made the way the issue found it:
- JPEG with 200 bytes of its data overwritten by 0xAB (no marker broken), PNG with a CRC
  error in its image data ..................... test_corrupt_images_are_counted_skips (the
                                       small and the large-image path); a folder of new
                                       images: test_workflow.py (predict_images)
- checkpoint with 2 KB overwritten mid-file .. test_damaged_checkpoint_is_one_line (classifier
                                       -> peaks extract, Mask R-CNN -> maskrcnn predict),
                                       test_damaged_training_checkpoint_is_not_resumed
- HDF5 store with 2 KB overwritten mid-file .. test_damaged_store_is_one_line (peaks or
                                       proposals -> pseudo_masks make, a shard -> gather);
                                       every offset: test_store.py
- dataset path that does not exist ........... test_config_paths_are_checked_when_parsed
                                       (snakemake -n names the key and the path)
- ImageNet weights from torch.hub ............ test_hub_weights_load_weights_only
"""

import io
import json
import os
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, build_manifest
from PIL import Image

from tag2mask.classifier.model import build_classifier, save_classifier
from tag2mask.cli import main
from tag2mask.core.config import section_options
from tag2mask.core.schema import SCHEMA_PATH, load_yaml
from tag2mask.dataset import large_images
from tag2mask.dataset.images import load_rgb, to_rgb
from tag2mask.dataset.jpeg_structure import jpeg_problem
from tag2mask.dataset.manifest import read_manifest

ENV = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")
PROGRESS_BAR = re.compile(r"\[\d\d:\d\d[<,]")  # tqdm: "... 2/2 [00:00<00:00, 9.3img/s]"


# --- helpers ------------------------------------------------------------------------------

def error_line(err, stage):
    """The one error line of a failed command's stderr; the rest must be log records or
    progress bars."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"tag2mask {stage}: error: ")]
    assert len(errors) == 1, err
    assert all(line in errors or LOG_LINE.match(line) or PROGRESS_BAR.search(line)
               for line in lines), err
    return errors[0]


def run_cli(*argv, timeout=120):
    """`python -m tag2mask.cli ...` in a subprocess: (exit status, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "tag2mask.cli", *map(str, argv)],
                          capture_output=True, text=True, env=ENV, timeout=timeout)
    return proc.returncode, proc.stderr


def snapshot(folder):
    """{relative path: bytes} of every file under `folder` (to show nothing was touched)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def no_temp_files(folder):
    return not [p for p in folder.rglob(".tmp-*")]


def rgb_array(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def write_csv(path, rows):
    path.write_text("\n".join(["image,labels", *rows]) + "\n")
    return path


def tags_config(images, csv, **dataset):
    return json.dumps({"kind": "tags", **dataset,
                       "tags": {"images": str(images), "labels_csv": str(csv)}})


def prepare(config, out_dir):
    return main(["dataset", "prepare", "--config", config, "--out-dir", str(out_dir)])


def write_png(path, array, colour_type, bit_depth=8, filters=(0, 1, 2, 3, 4), palette=b"",
              trns=b""):
    """A non-interlaced PNG of `array` ([H, W] or [H, W, C] samples), rows filtered with the
    given filter types in turn (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth), so that every
    filter a decoder must undo occurs."""
    arr = np.asarray(array)
    h, w = arr.shape[:2]
    rows = arr.astype(">u2" if bit_depth == 16 else np.uint8).reshape(h, -1).view(np.uint8)
    bpp = max(1, rows.shape[1] // w)
    chunks = [struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)]
    out, prior = bytearray(), np.zeros(rows.shape[1], int)
    for y in range(h):
        x, b = rows[y].astype(int), prior
        a = np.concatenate([np.zeros(bpp, int), x[:-bpp]])
        c = np.concatenate([np.zeros(bpp, int), b[:-bpp]])
        ftype = filters[y % len(filters)]
        if ftype == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        else:
            pred = [0, a, b, (a + b) // 2][ftype]
        out += bytes([ftype]) + ((x - pred) & 0xFF).astype(np.uint8).tobytes()
        prior = x
    body = [(b"IHDR", chunks[0])]
    body += [(b"PLTE", palette)] if palette else []
    body += [(b"tRNS", trns)] if trns else []
    body += [(b"IDAT", zlib.compress(bytes(out), 6)), (b"IEND", b"")]
    with open(path, "wb") as f:
        f.write(large_images.PNG_SIGNATURE)
        for kind, data in body:
            f.write(large_images._chunk(kind, data))
    return path


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A random tiny classifier (classes a, b, c) at 32 px, and the inline peaks options."""
    folder = tmp_path_factory.mktemp("classifier")
    options = section_options(json.dumps({"backbone": "tiny", "pretrained": False,
                                          "input_size": 32, "stride": 8}), "classifier")
    torch.manual_seed(0)
    save_classifier(folder / "classifier.pt", build_classifier(options, ["a", "b", "c"]),
                    options, 0)
    peaks = json.dumps({"peak_threshold": -1e9, "max_peaks": 3, "map_size": 8, "upsample": 1,
                        "panels": 0, "device": "cpu"})
    return folder / "classifier.pt", peaks


def extract_peaks(manifest, checkpoint, peaks_options, out):
    return main(["peaks", "extract", "--manifest", str(manifest), "--checkpoint", str(checkpoint),
                 "--config", peaks_options, "--out", str(out), "--no-progress",
                 "--threads", "1"])


# --- corrupt and truncated images ---------------------------------------------------------

def jpeg_bytes(seed=5, **options):
    buf = io.BytesIO()
    Image.fromarray(rgb_array(48, 64, seed=seed)).save(buf, "JPEG", **{"quality": 90, **options})
    return buf.getvalue()


def garbage_in_jpeg_data(path):
    """A block of random bytes over the compressed data: PIL decodes it without an error."""
    data = jpeg_bytes()
    start = data.find(b"\xff\xda") + 40
    garbage = np.random.default_rng(1).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    assert len(data) > start + 2000
    path.write_bytes(data[:start] + garbage + data[start + 1000:])
    with Image.open(path) as img:
        img.load()  # the damage PIL does not see


def truncated_jpeg(path):
    data = jpeg_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def jpeg_header_then_garbage(path):
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")


def jpeg_data_overwritten(path, size=(320, 256)):
    """200 bytes in the middle of the compressed data overwritten with 0xAB: no 0xFF byte, so
    no marker breaks; PIL and the structural walk both pass it, most rows decode as garbage."""
    w, h = size
    smooth = np.add.outer(np.arange(h), np.arange(w)) % 256
    arr = np.dstack([smooth, smooth[::-1], smooth[:, ::-1]]).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    data = bytearray(buf.getvalue())
    mid = len(data) // 2
    data[mid:mid + 200] = b"\xab" * 200
    path.write_bytes(bytes(data))
    assert jpeg_problem(path) is None
    with Image.open(path) as img:
        img.load()  # the damage PIL does not see


def png_crc_error(path, size=(32, 24)):
    """A PNG whose image-data chunk fails its CRC (a byte of the stored CRC changed). PIL
    does not check that CRC and decodes the file without a word. (A changed byte in the
    compressed data itself PIL does find, by the zlib stream's own Adler-32; the CRC check
    finds it first and names it: test_workflow.py's predict_images folder.)"""
    write_png(path, rgb_array(size[1], size[0], seed=7), colour_type=2)
    data = bytearray(path.read_bytes())
    at = data.find(b"IDAT")
    length = struct.unpack(">I", data[at - 4:at])[0]
    data[at + 4 + length + 1] ^= 0x5A  # the chunk's CRC
    path.write_bytes(bytes(data))
    with Image.open(path) as img:
        img.load()  # the damage PIL does not see


def truncated_png(path, size=(32, 24)):
    write_png(path, rgb_array(size[1], size[0], seed=6), colour_type=2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


@pytest.mark.parametrize("name, make, limits", [
    ("garbage.jpg", garbage_in_jpeg_data, {}),
    ("truncated.jpg", truncated_jpeg, {}),
    ("header_only.jpg", jpeg_header_then_garbage, {}),
    ("truncated.png", truncated_png, {}),
    ("overwritten.jpg", jpeg_data_overwritten, {}),
    ("crc.png", png_crc_error, {}),
    ("overwritten_large.jpg", jpeg_data_overwritten, {"max_image_pixels": 20_000}),
    ("crc_large.png", lambda p: png_crc_error(p, (200, 150)), {"max_image_pixels": 2000}),
    # too large: the band decoder of the downscale path meets the truncation
    ("truncated_large.png", lambda p: truncated_png(p, (200, 150)),
     {"max_image_pixels": 2000}),
])
def test_corrupt_images_are_counted_skips(tmp_path, caplog, name, make, limits):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(rgb_array(24, 32)).save(images / "good.png")
    make(images / name)
    csv = write_csv(tmp_path / "labels.csv", ["good.png,cat", f"{name},dog"])
    out = tmp_path / "dataset"
    assert prepare(tags_config(images, csv, **limits), out) == 0
    m = read_manifest(out / "manifest.json")
    assert [r.id for r in m.images] == ["good.png"]
    assert m.stats["skipped"] == 1 and m.stats["downscaled"] == 0
    [skip] = m.stats["skipped_files"]
    assert skip["path"] == str(images / name) and "cannot decode image" in skip["reason"]
    named = {"overwritten": "(Corrupt JPEG data: ", "crc": "(corrupt PNG (CRC error in chunk IDAT"}
    assert named.get(name.split(".")[0].split("_")[0], "") in skip["reason"]
    assert f"skipping {images / name}: cannot decode image" in caplog.text
    assert no_temp_files(out) and not (out / "resized").exists()


def test_jpeg_structure_check(tmp_path):
    """Sound JPEGs of every kind PIL writes pass (the voc-mini photos pass in
    test_datasets_voc.py); damaged data and truncation are found."""
    path = tmp_path / "x.jpg"
    variants = [{}, {"progressive": True}, {"optimize": True}, {"subsampling": 0},
                {"restart_marker_blocks": 2}]
    for options in variants:
        path.write_bytes(jpeg_bytes(**options))
        assert jpeg_problem(path) is None, options
    path.write_bytes(jpeg_bytes() + b"camera trailer \xff\x12")  # after the end: ignored
    assert jpeg_problem(path) is None
    for mode in ("L", "CMYK"):
        Image.fromarray(rgb_array(20, 20)).convert(mode).save(path, quality=90)
        assert jpeg_problem(path) is None, mode
    garbage_in_jpeg_data(path)
    assert jpeg_problem(path).startswith("corrupt ")
    truncated_jpeg(path)
    assert jpeg_problem(path) == "truncated JPEG (no end-of-image marker)"
    path.write_bytes(jpeg_bytes()[:-2])
    assert jpeg_problem(path) == "truncated JPEG (no end-of-image marker)"
    path.write_bytes(b"\x89PNG")
    assert jpeg_problem(path) == "not a JPEG file (no start-of-image marker)"


def test_image_broken_after_prepare_fails_the_stage_in_one_line(tmp_path, classifier, capsys):
    """An image that breaks after the manifest was written stops the stage with one line
    naming it: peaks extract (in process), classifier train with a DataLoader worker
    process (whose exception torch re-raises by its message)."""
    checkpoint, peaks = classifier
    manifest = build_manifest(tmp_path, n_images=4, size=(40, 32))
    out = tmp_path / "peaks.h5"
    assert extract_peaks(manifest, checkpoint, peaks, out) == 0
    before = out.read_bytes()
    broken = tmp_path / "images" / "img2.png"
    broken.write_bytes(broken.read_bytes()[:60])
    capsys.readouterr()
    assert extract_peaks(manifest, checkpoint, peaks, out) == 2
    line = error_line(capsys.readouterr().err, "peaks extract")
    assert f"{broken}: cannot decode image" in line
    assert out.read_bytes() == before and no_temp_files(tmp_path)

    options = json.dumps({"backbone": "tiny", "pretrained": False, "input_size": 32,
                          "stride": 8, "epochs": 1, "batch_size": 2, "num_workers": 1,
                          "device": "cpu"})
    train_dir = tmp_path / "classifier"
    assert main(["classifier", "train", "--manifest", str(manifest), "--config", options,
                 "--out-dir", str(train_dir), "--no-progress", "--threads", "1"]) == 2
    line = error_line(capsys.readouterr().err, "classifier train")
    # the worker's exception re-raised by its message: still the original one line
    assert line.startswith(f"tag2mask classifier train: error: {broken}: cannot decode image (")
    assert "DataLoader" not in line and "Caught" not in line
    assert not (train_dir / "classifier.pt").exists() and no_temp_files(train_dir)


# --- colour modes and 16-bit --------------------------------------------------------------

def test_other_colour_modes_are_converted_and_counted(tmp_path, classifier):
    images = tmp_path / "images"
    images.mkdir()
    base = rgb_array(20, 28, seed=3)
    grey = base[..., 0]
    Image.fromarray(base).convert("CMYK").save(images / "cmyk.jpg", quality=95)
    Image.fromarray(grey, "L").save(images / "grey.jpg", quality=95)
    Image.fromarray(grey, "L").save(images / "grey.png")
    rgba = np.dstack([base, np.full(grey.shape, 255, np.uint8)])
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba, "RGBA").save(images / "rgba.png")
    deep = grey.astype(np.uint16) * 257 + 100  # 16-bit, low byte not a copy of the high one
    Image.fromarray(deep).save(images / "deep16.png")
    Image.fromarray(base).save(images / "plain.png")
    assert Image.open(images / "cmyk.jpg").mode == "CMYK"
    assert Image.open(images / "deep16.png").mode == "I;16"
    names = ["cmyk.jpg", "grey.jpg", "grey.png", "rgba.png", "deep16.png", "plain.png"]
    csv = write_csv(tmp_path / "labels.csv", [f"{n},{'abc'[i % 3]}" for i, n in
                                              enumerate(names)])
    out = tmp_path / "dataset"
    assert prepare(json.dumps({"kind": "tags", "tags": {
        "images": str(images), "labels_csv": str(csv), "classes": ["a", "b", "c"]}}), out) == 0
    m = read_manifest(out / "manifest.json")
    assert m.stats["converted_to_rgb"] == 5 and m.stats["skipped"] == 0
    assert [r.id for r in m.images] == names  # kept as they are, converted when read
    for r in m.images:
        arr = load_rgb(r.path)
        assert arr.shape == (20, 28, 3) and arr.dtype == np.uint8
    assert np.array_equal(load_rgb(images / "deep16.png")[..., 2],
                          np.round(deep / 257).astype(np.uint8))
    assert np.array_equal(load_rgb(images / "grey.png")[..., 1], grey)
    assert tuple(load_rgb(images / "rgba.png")[0, 0]) == (255, 255, 255)
    assert np.abs(load_rgb(images / "cmyk.jpg").astype(int) - base).mean() < 12
    # and a stage reads them all
    checkpoint, peaks = classifier
    assert extract_peaks(out / "manifest.json", checkpoint, peaks, tmp_path / "p.h5") == 0
    from tag2mask.core.store import StoreReader
    with StoreReader(tmp_path / "p.h5", "peaks") as store:
        assert sorted(store.image_ids) == sorted(names)


# --- the 10,000 x 10,000 image ------------------------------------------------------------

BIG = 10_000
RECT = (3000, 2000, 7000, 6000)  # x0, y0, x1, y1 of a red rectangle on blue
BLUE, RED = (40, 90, 200), (220, 30, 30)


@pytest.fixture(scope="module")
def huge_images(tmp_path_factory):
    """A 10,000 x 10,000 RGB JPEG and PNG (a red rectangle on blue), a few MB each."""
    folder = tmp_path_factory.mktemp("huge") / "images"
    folder.mkdir()
    # PIL encodes a JPEG from the whole image (400 MB): do that in a process of its own
    subprocess.run([sys.executable, "-c", "import sys; from PIL import Image; "
                    f"img = Image.new('RGB', ({BIG}, {BIG}), {BLUE}); img.paste({RED}, {RECT}); "
                    "img.save(sys.argv[1], quality=80)", str(folder / "huge.jpg")],
                   check=True, timeout=120)
    # the PNG row by row: it never exists whole in memory
    plain = np.tile(np.array(BLUE, np.uint8), BIG)
    marked = plain.reshape(BIG, 3).copy()
    marked[RECT[0]:RECT[2]] = RED
    marked = marked.ravel()
    z = zlib.compressobj(6)
    idat = bytearray()
    prior = None
    for y in range(BIG):
        row = marked if RECT[1] <= y < RECT[3] else plain
        filtered = b"\x00" + row.tobytes() if prior is None else \
            b"\x02" + (row - prior).tobytes()  # Up: zero bytes wherever the row repeats
        idat += z.compress(filtered)
        prior = row
    idat += z.flush()
    with open(folder / "huge.png", "wb") as f:
        f.write(large_images.PNG_SIGNATURE)
        f.write(large_images._chunk(b"IHDR", struct.pack(">IIBBBBB", BIG, BIG, 8, 2, 0, 0, 0)))
        f.write(large_images._chunk(b"IDAT", bytes(idat)))
        f.write(large_images._chunk(b"IEND", b""))
    Image.fromarray(rgb_array(30, 40)).save(folder / "small.png")
    return folder


# Peak resident memory of the process's own address space (VmHWM: unlike ru_maxrss, it
# starts afresh at exec, so it does not inherit the pytest process's size).
MEASURE = """
import json, sys
import tag2mask.cli, tag2mask.dataset.cli, tag2mask.dataset.tags

def peak_mb():
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024

base = peak_mb()
rc = tag2mask.cli.main(sys.argv[1:])
print(json.dumps({"rc": rc, "base_mb": base, "peak_mb": peak_mb()}))
"""


def prepare_measured(config, out_dir):
    """dataset prepare in a fresh process: (exit status, peak RSS MB, MB above the peak after
    importing the package)."""
    proc = subprocess.run([sys.executable, "-c", MEASURE, "dataset", "prepare", "--config",
                           config, "--out-dir", str(out_dir)],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    return m["rc"], m["peak_mb"], m["peak_mb"] - m["base_mb"]


@pytest.mark.parametrize("name", ["huge.jpg", "huge.png"])
def test_huge_image_is_downscaled_in_bounded_memory(huge_images, tmp_path, name):
    csv = write_csv(tmp_path / "labels.csv", [f"{name},cat", "small.png,dog"])
    out = tmp_path / "dataset"
    config = tags_config(huge_images, csv, max_image_pixels=1_000_000,
                         large_images="downscale")
    rc, peak, above = prepare_measured(config, out)
    print(f"{name}: peak RSS {peak:.0f} MB, {above:.0f} MB above the imported package")
    assert rc == 0
    # decoding the whole image would take 300 MB as RGB (PIL keeps 4 bytes a pixel: 400 MB)
    assert above < 100
    m = read_manifest(out / "manifest.json")
    assert m.stats["downscaled"] == 1 and m.stats["skipped"] == 0
    big, small = m.images
    assert (big.width, big.height) == (1000, 1000) and (small.width, small.height) == (40, 30)
    assert big.path == str(out / "resized" / f"{name}.1000x1000.png")
    copy = load_rgb(big.path)
    assert copy.shape == (1000, 1000, 3)
    # the rectangle is where it was, scaled by 1/10
    assert np.abs(copy[400, 500].astype(int) - RED).max() <= 12
    assert np.abs(copy[100, 100].astype(int) - BLUE).max() <= 12
    assert np.abs(copy[800, 500].astype(int) - BLUE).max() <= 12
    inside = (np.abs(copy.astype(int) - RED).max(-1) <= 40)
    ys, xs = np.nonzero(inside)
    assert abs(xs.min() - 300) <= 2 and abs(xs.max() - 699) <= 2
    assert abs(ys.min() - 200) <= 2 and abs(ys.max() - 599) <= 2


def test_huge_image_is_refused_under_skip(huge_images, tmp_path):
    csv = write_csv(tmp_path / "labels.csv", ["huge.jpg,cat", "huge.png,cat", "small.png,dog"])
    out = tmp_path / "dataset"
    rc, peak, above = prepare_measured(tags_config(huge_images, csv, large_images="skip",
                                                   max_image_pixels=1_000_000), out)
    print(f"skip: peak RSS {peak:.0f} MB, {above:.0f} MB above the imported package")
    assert rc == 0 and above < 30  # the header only: nothing decoded
    m = read_manifest(out / "manifest.json")
    assert [r.id for r in m.images] == ["small.png"]
    assert m.stats["skipped"] == 2 and m.stats["downscaled"] == 0
    for skip in m.stats["skipped_files"]:
        assert skip["reason"] == ("10000x10000 = 100000000 pixels is more than "
                                  "max_image_pixels=1000000")
    assert not (out / "resized").exists()


@pytest.mark.parametrize("colour_type, bit_depth, channels", [
    (0, 8, 1), (2, 8, 3), (3, 8, 1), (4, 8, 2), (6, 8, 4), (0, 16, 1)])
def test_png_bands_equal_a_whole_decode(tmp_path, colour_type, bit_depth, channels):
    rng = np.random.default_rng(colour_type + bit_depth)
    h, w = 37, 23
    top = 65535 if bit_depth == 16 else 255
    smooth = (np.add.outer(np.arange(h) * 7, np.arange(w) * 3) % (top + 1))
    arr = (smooth[..., None] + rng.integers(0, 40, (h, w, channels))) % (top + 1)
    palette = trns = b""
    if colour_type == 3:
        arr = arr % 16
        palette = rng.integers(0, 255, 48, dtype=np.uint8).tobytes()
        trns = bytes([255, 0, 128])  # entries 0-2 partly transparent
    path = write_png(tmp_path / "x.png", arr.squeeze(-1) if channels == 1 else arr,
                     colour_type, bit_depth, palette=palette, trns=trns)
    whole = Image.open(path)
    whole.load()
    header = large_images.read_png_header(path)
    assert header.streamable and (header.width, header.height) == (w, h)
    for rows in (1, 4, 10, 37, 100):
        bands = list(large_images.png_bands(path, header, rows))
        assert [b.height for b in bands[:-1]] == [rows] * (len(bands) - 1)
        assert all(b.mode == whole.mode for b in bands)
        assert np.array_equal(np.concatenate([np.asarray(b) for b in bands]),
                              np.asarray(whole))
    if colour_type == 3:
        assert np.array_equal(np.asarray(to_rgb(bands[0])[0]), np.asarray(to_rgb(whole)[0]))


def test_banded_downscale_equals_a_whole_decode(tmp_path, monkeypatch):
    """Bands of 3 rows, box-reduced by 3 each, then Lanczos: the same pixels as reducing the
    whole decoded image."""
    monkeypatch.setattr(large_images, "BAND_BYTES", 200)
    arr = rgb_array(61, 47, seed=8)
    path = write_png(tmp_path / "x.png", arr, colour_type=2)
    with Image.open(path) as img:
        small = large_images.downscaled_rgb(img, path, (15, 20))
    expected = Image.fromarray(arr).reduce(3).resize((15, 20), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(small), np.asarray(expected))


# --- tags CSV -----------------------------------------------------------------------------

@pytest.fixture
def tags_folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        Image.fromarray(rgb_array(12, 16, seed=i)).save(images / name)
    return images


def test_unknown_class_in_csv_is_one_line_and_keeps_the_old_manifest(tmp_path, tags_folder):
    csv = write_csv(tmp_path / "labels.csv", ["a.png,cat", "b.png,dog"])
    out = tmp_path / "dataset"
    config = json.dumps({"kind": "tags", "tags": {"images": str(tags_folder),
                                                  "labels_csv": str(csv),
                                                  "classes": ["cat", "dog"]}})
    assert prepare(config, out) == 0
    before = snapshot(out)
    write_csv(csv, ["a.png,cat", "b.png,dog", "c.png,dog zebra"])
    rc, err = run_cli("dataset", "prepare", "--config", config, "--out-dir", out)
    assert rc == 2
    line = error_line(err, "dataset prepare")
    assert line == (f"tag2mask dataset prepare: error: {csv}: line 4: unknown class 'zebra' "
                    "(classes: cat, dog)")
    assert snapshot(out) == before and no_temp_files(out)


def test_empty_tag_list_is_a_counted_skip(tmp_path, tags_folder, caplog, capsys):
    csv = write_csv(tmp_path / "labels.csv", ["a.png,cat", "b.png,", "c.png,  "])
    out = tmp_path / "dataset"
    assert prepare(tags_config(tags_folder, csv), out) == 0
    m = read_manifest(out / "manifest.json")
    assert [r.id for r in m.images] == ["a.png"] and m.stats["skipped"] == 2
    assert [s["reason"] for s in m.stats["skipped_files"]] == [
        "empty tag list (labels.csv line 3)", "empty tag list (labels.csv line 4)"]
    assert "empty tag list (labels.csv line 3)" in caplog.text
    # with every tag list empty there is no dataset: one line, the old manifest kept
    before = snapshot(out)
    write_csv(csv, ["a.png,", "b.png,"])
    capsys.readouterr()
    assert prepare(tags_config(tags_folder, csv), out) == 2
    line = error_line(capsys.readouterr().err, "dataset prepare")
    assert line.endswith(f"{out / 'manifest.json'}: no usable images")
    assert snapshot(out) == before and no_temp_files(out)


# --- COCO: images without instances, malformed JSON ---------------------------------------

def square(y0, x0, size=6, h=20, w=30):
    return [[x0, y0, x0 + size, y0, x0 + size, y0 + size, x0, y0 + size]]


@pytest.fixture
def coco_files(tmp_path):
    """COCO train split: a.png with a dog, b.png with nothing, c.png with a crowd only."""
    images = tmp_path / "train"
    images.mkdir()
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        Image.fromarray(rgb_array(20, 30, seed=i)).save(images / name)
    data = {"images": [{"id": i + 1, "file_name": n, "width": 30, "height": 20}
                       for i, n in enumerate(["a.png", "b.png", "c.png"])],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                 "segmentation": square(2, 3)},
                {"id": 2, "image_id": 3, "category_id": 2, "iscrowd": 1,
                 "segmentation": square(8, 8)}],
            "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "person"}]}
    ann = tmp_path / "train.json"
    ann.write_text(json.dumps(data))
    config = json.dumps({"kind": "coco", "coco": {"train_annotations": str(ann),
                                                  "train_images": str(images)}})
    return ann, images, data, config


def test_coco_image_without_instance_is_a_counted_skip(tmp_path, coco_files, caplog):
    ann, images, _, config = coco_files
    out = tmp_path / "dataset"
    assert prepare(config, out) == 0
    m = read_manifest(out / "manifest.json")
    assert [r.id for r in m.images] == ["1"] and m.stats["skipped"] == 2
    reasons = {s["path"]: s["reason"] for s in m.stats["skipped_files"]}
    assert reasons == {str(images / "b.png"): "no non-crowd annotation (empty tag list)",
                       str(images / "c.png"): "no non-crowd annotation (empty tag list)"}
    assert f"skipping {images / 'b.png'}" in caplog.text
    gt = json.loads((out / "gt" / "train.json").read_text())
    assert [im["name"] for im in gt["images"]] == ["1"]


def test_evaluation_counts_predictions_on_an_image_without_gt(tmp_path, capsys):
    """A val image can keep its tags and have no instance (VOC: instances all void); a
    prediction there is a false positive, not a crash."""
    mask = np.zeros((20, 30), np.uint8)
    mask[2:8, 3:9] = 1
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask))
    seg = {"size": [20, 30], "counts": rle["counts"].decode()}
    gt = {"images": [{"id": 1, "width": 30, "height": 20}, {"id": 2, "width": 30, "height": 20}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": seg,
                           "area": 36, "bbox": [3, 2, 6, 6], "iscrowd": 0}],
          "categories": [{"id": 1, "name": "dog"}]}
    predictions = [{"image_id": 2, "category_id": 1, "segmentation": seg, "score": 0.95},
                   {"image_id": 1, "category_id": 1, "segmentation": seg, "score": 0.9}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(predictions))
    assert main(["evaluation", "score", "--gt", str(tmp_path / "gt.json"), "--predictions",
                 str(tmp_path / "pred.json"), "--config", "{}", "--out",
                 str(tmp_path / "e.json")]) == 0
    report = json.loads((tmp_path / "e.json").read_text())
    # ranked: a false positive (0.95), then the true positive: precision 1/2 at recall 1
    assert report["mAP@0.5"] == pytest.approx(0.5, abs=0.01)


def edit(data, change):
    data = json.loads(json.dumps(data))
    change(data)
    return json.dumps(data)


@pytest.mark.parametrize("text, problem", [
    (lambda d: json.dumps(d)[:-40], "not valid JSON"),
    (lambda d: "[1, 2]", "not a COCO instances file (top level is not an object)"),
    (lambda d: edit(d, lambda x: x.pop("annotations")), "missing or non-list key 'annotations'"),
    (lambda d: edit(d, lambda x: x["annotations"][0].update(image_id=99)),
     "annotation 1 points to unknown image id 99"),
    (lambda d: edit(d, lambda x: x["images"][0].pop("width")), "images[0] lacks key(s) ['width']"),
    (lambda d: edit(d, lambda x: x["annotations"][0].update(segmentation={"counts": 5})),
     "annotation 1: segmentation is neither polygons nor RLE"),
    # values of the wrong type (each was a bare TypeError / ValueError traceback)
    (lambda d: edit(d, lambda x: x["images"][0].update(width="30")),
     "images[0].width must be a positive integer, not '30'"),
    (lambda d: edit(d, lambda x: x["images"][1].update(file_name=None)),
     "images[1].file_name must be a non-empty string, not None"),
    (lambda d: edit(d, lambda x: x["categories"][1].update(id=[2])),
     "categories[1].id must be an integer, not [2]"),
    (lambda d: edit(d, lambda x: x["images"][0].update(id={"n": 1})),
     "images[0].id must be an integer or a string, not {'n': 1}"),
    (lambda d: edit(d, lambda x: x["categories"][0].update(name=7)),
     "categories[0].name must be a non-empty string, not 7"),
])
def test_malformed_coco_json_is_one_line(tmp_path, coco_files, capsys, text, problem):
    ann, _, data, config = coco_files
    out = tmp_path / "dataset"
    assert prepare(config, out) == 0
    before = snapshot(out)
    ann.write_text(text(data))
    capsys.readouterr()
    assert prepare(config, out) == 2
    line = error_line(capsys.readouterr().err, "dataset prepare")
    assert line.startswith(f"tag2mask dataset prepare: error: {ann}: {problem}")
    assert snapshot(out) == before and no_temp_files(out)


def test_malformed_coco_json_in_a_subprocess(tmp_path, coco_files):
    ann, _, data, config = coco_files
    ann.write_text(json.dumps(data)[:-40])
    rc, err = run_cli("dataset", "prepare", "--config", config, "--out-dir", tmp_path / "d")
    assert rc == 2
    assert f"error: {ann}: not valid JSON" in error_line(err, "dataset prepare")
    assert not (tmp_path / "d" / "manifest.json").exists()


@pytest.mark.parametrize("change, problem", [
    (lambda d: d.pop("images"), "'images' missing or not a list"),
    (lambda d: d["images"][0].pop("width"), "image 'img0' lacks keys ['width']"),
    (lambda d: d["images"][1].update(height="32"), "image 'img1': height must be an integer"),
    (lambda d: d["images"][0].update(labels="ab"),
     "image 'img0': labels must be a list of class names"),
])
def test_malformed_manifest_is_one_line(tmp_path, classifier, capsys, change, problem):
    """(Beyond the checklist) a hand-edited manifest: each was a KeyError / TypeError."""
    checkpoint, peaks = classifier
    manifest = build_manifest(tmp_path, n_images=2, size=(40, 32))
    data = json.loads(manifest.read_text())
    change(data)
    manifest.write_text(json.dumps(data))
    assert extract_peaks(manifest, checkpoint, peaks, tmp_path / "p.h5") == 2
    line = error_line(capsys.readouterr().err, "peaks extract")
    assert line == f"tag2mask peaks extract: error: {manifest}: {problem}"


# --- configuration ------------------------------------------------------------------------

@pytest.mark.parametrize("config, key", [
    ({"shards": "two"}, "shards: 'two' is not of type 'integer'"),
    ({"dataset": {"kind": "tags", "max_image_pixels": "big"}},
     "dataset.max_image_pixels: 'big' is not of type 'integer'"),
    ({"dataset": {"large_images": "crop"}}, "dataset.large_images: 'crop' is not one of"),
    ({"dataset": {"synthetic": {"sed": 1}}},
     "dataset.synthetic: Additional properties are not allowed ('sed' was unexpected)"),
    # a misspelt section: before, the stage ran with the defaults
    ({"datset": {"kind": "tags"}},
     "(top level): Additional properties are not allowed ('datset' was unexpected)"),
])
def test_config_errors_on_the_command_line(tmp_path, capsys, config, key):
    path = tmp_path / "my config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "dataset"
    assert prepare(str(path), out) == 2
    line = error_line(capsys.readouterr().err, "dataset prepare")
    assert line.startswith(f"tag2mask dataset prepare: error: {path}: config key {key}")
    assert not out.exists()


@pytest.mark.parametrize("inline, key", [
    ('{"kind": 3}', "kind: 3 is not one of"),
    ('{"kind": "tags", "colour": true}',
     "dataset: Additional properties are not allowed ('colour' was unexpected)"),
    ('{"kind": "synthetic", "synthetic": {"seed": -1}}', "dataset.synthetic.seed: -1 is less"),
    ('{"kind": "tags"', "inline options are not valid JSON"),
])
def test_inline_config_errors_on_the_command_line(tmp_path, capsys, inline, key):
    assert prepare(inline, tmp_path / "dataset") == 2
    line = error_line(capsys.readouterr().err, "dataset prepare")
    assert key in line and ("dataset options: config key" in line or "--config" in line)


def test_config_errors_in_snakemake_name_the_key(tmp_path):
    """The Snakefile validates the config against config/schema.yaml: a bad value or key is
    a short error naming it, not snakemake's dump of the whole schema nor a traceback."""
    bad = {"dataset": {"synthetic": {"seed": "zero"}}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    cases = [(["--config", "typo_key=1"],  # snakemake printed the whole schema for this one
              "config key (top level): Additional properties are not allowed ('typo_key' "
              "was unexpected)"),
             (["--configfile", str(tmp_path / "bad.yaml")],
              "config key dataset.synthetic.seed: 'zero' is not of type 'integer'")]
    for args, message in cases:
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                               "-d", str(tmp_path / "run"), "-n", *args],
                              capture_output=True, text=True, timeout=120)
        err = proc.stdout + proc.stderr
        assert proc.returncode != 0 and message in err, err
        assert "Traceback" not in err and len(err.splitlines()) < 10, err
    assert not (tmp_path / "run" / "results").exists()


def test_schema_descriptions_are_not_split_by_commas():
    """An unquoted comma in a YAML flow mapping ({..., description: a, b}) cuts the
    description short and adds a key "b" that the validator silently ignores."""
    keywords = {"type", "default", "description", "properties", "additionalProperties", "enum",
                "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "items",
                "minItems", "maxItems", "pattern", "oneOf", "anyOf", "const", "uniqueItems",
                "propertyNames", "x-read-by", "x-rerun", "x-identity", "x-selector",
                "x-registry"}

    def walk(schema, where):
        for key, sub in schema.get("properties", {}).items():
            assert set(sub) <= keywords, f"{where}{key}: stray keys {set(sub) - keywords}"
            walk(sub, f"{where}{key}.")
            if isinstance(sub.get("items"), dict):
                walk(sub["items"], f"{where}{key}[].")
    walk(load_yaml(SCHEMA_PATH), "")


# --- checkpoints of another class list ----------------------------------------------------

def test_classifier_of_other_classes_is_refused_by_extract_peaks(tmp_path, classifier, capsys):
    checkpoint, peaks = classifier
    same = build_manifest(tmp_path / "same", n_images=3, size=(40, 32))
    other = build_manifest(tmp_path / "other", n_images=3, size=(40, 32),
                           classes=("a", "b", "d"))
    out = tmp_path / "peaks.h5"
    assert extract_peaks(same, checkpoint, peaks, out) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert extract_peaks(other, checkpoint, peaks, out) == 2
    line = error_line(capsys.readouterr().err, "peaks extract")
    assert line == (f"tag2mask peaks extract: error: {checkpoint}: classifier was trained on "
                    "classes ['a', 'b', 'c'], but the dataset has ['a', 'b', 'd']")
    assert out.read_bytes() == before and no_temp_files(tmp_path)


def test_maskrcnn_of_other_classes_is_refused_by_predict(tmp_path, capsys):
    """A Mask R-CNN of classes square and disk, asked for the manifest's a, b, c."""
    checkpoint = tiny_maskrcnn_checkpoint(tmp_path / "model.pt", ["square", "disk"])
    manifest = build_manifest(tmp_path / "data", n_images=2, size=(40, 32), split="val")
    out = tmp_path / "predictions.json"
    out.write_text("[]\n")  # an earlier run's predictions
    assert main(["maskrcnn", "predict", "--checkpoint", str(checkpoint),
                 "--manifest", str(manifest),
                 "--split", "val", "--out", str(out), "--no-progress"]) == 2
    line = error_line(capsys.readouterr().err, "maskrcnn predict")
    assert line == (f"tag2mask maskrcnn predict: error: {checkpoint}: checkpoint was trained on classes "
                    "['square', 'disk'], not ['a', 'b', 'c']")
    assert out.read_text() == "[]\n" and no_temp_files(tmp_path)


def test_training_checkpoint_of_other_classes_is_not_resumed(tmp_path, caplog):
    """classifier train finds a last.pt of another class list in its folder: logged, not
    resumed, trained afresh (a checkpoint from a run on other tags is no error)."""
    options = json.dumps({"backbone": "tiny", "pretrained": False, "input_size": 32,
                          "stride": 8, "epochs": 1, "batch_size": 4, "num_workers": 0,
                          "device": "cpu"})
    out = tmp_path / "classifier"
    first = build_manifest(tmp_path / "first", n_images=4, size=(32, 32), classes=("x", "y"))
    second = build_manifest(tmp_path / "second", n_images=4, size=(32, 32))
    for manifest in (first, second):
        assert main(["classifier", "train", "--manifest", str(manifest), "--config", options,
                     "--out-dir", str(out), "--no-progress", "--threads", "1"]) == 0
    assert f"not resuming from {out / 'last.pt'}" in caplog.text
    ckpt = torch.load(out / "classifier.pt", weights_only=True)
    assert ckpt["meta"]["class_names"] == ["a", "b", "c"]
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] \
        == [1]


# --- damaged checkpoints and stores, config paths, hub weights (issue 14) ------------------

def overwrite_mid_file(path, n=2048, byte=b"\xab"):
    """n bytes in the middle of the file overwritten (the size stays the same)."""
    data = bytearray(path.read_bytes())
    assert len(data) > 2 * n, len(data)
    mid = len(data) // 2 - n // 2
    data[mid:mid + n] = byte * n
    path.write_bytes(bytes(data))


def tiny_maskrcnn_checkpoint(path, class_names):
    """An untrained tiny Mask R-CNN saved as `maskrcnn train` saves its model.pt."""
    from tag2mask.maskrcnn.model import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, build_model
    options = section_options(json.dumps({"backbone": "tiny", "pretrained": False,
                                          "fpn_channels": 16, "box_head_dim": 32,
                                          "mask_head_channels": 8, "mask_head_layers": 1,
                                          "min_size": [64], "max_size": 64,
                                          "device": "cpu", "num_workers": 0}), "maskrcnn")
    torch.manual_seed(0)
    model = build_model(options, len(class_names), load_weights=False)
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                "model": model.state_dict(), "config": json.dumps(options, sort_keys=True),
                "class_names": list(class_names), "epochs": 0, "history": []}, path)
    return path


@pytest.mark.parametrize("kind", ["classifier", "maskrcnn"])
def test_damaged_checkpoint_is_one_line(tmp_path, classifier, kind):
    """2 KB overwritten mid-file: torch.load alone loaded it without a word (peaks extract
    exited 0 with 0 peaks); the zip CRC check names the file, the member and the rule."""
    manifest = build_manifest(tmp_path / "data", n_images=2, size=(40, 32), split="val")
    out = tmp_path / "out"
    if kind == "classifier":
        checkpoint = tmp_path / "classifier.pt"
        checkpoint.write_bytes(classifier[0].read_bytes())
        argv = ["peaks", "extract", "--manifest", manifest, "--checkpoint", checkpoint,
                "--config", classifier[1], "--out", out, "--no-progress", "--threads", "1"]
        stage, rule = "peaks extract", "train_classifier; by hand: tag2mask classifier train"
    else:
        checkpoint = tiny_maskrcnn_checkpoint(tmp_path / "model.pt", ["a", "b", "c"])
        argv = ["maskrcnn", "predict", "--checkpoint", checkpoint, "--manifest", manifest,
                "--split", "val", "--out", out, "--no-progress"]
        stage, rule = "maskrcnn predict", "train_maskrcnn; by hand: tag2mask maskrcnn train"
    overwrite_mid_file(checkpoint)
    rc, err = run_cli(*argv)
    assert rc == 2
    line = error_line(err, stage)
    assert line.startswith(f"tag2mask {stage}: error: {checkpoint}: ")
    assert " checkpoint is damaged: " in line and "CRC" in line, line
    assert line.endswith(f"rerun the stage that wrote it (snakemake --forcerun {rule})")
    assert not out.exists() and no_temp_files(tmp_path)


def test_damaged_training_checkpoint_is_not_resumed(tmp_path, caplog):
    """A damaged last.pt (classifier) is logged by name and training starts over; it is not
    a Snakemake output, so the rule's rerun is the remedy already under way."""
    options = json.dumps({"backbone": "tiny", "pretrained": False, "input_size": 32,
                          "stride": 8, "epochs": 1, "batch_size": 4, "num_workers": 0,
                          "device": "cpu"})
    manifest = build_manifest(tmp_path / "data", n_images=4, size=(32, 32))
    out = tmp_path / "classifier"
    argv = ["classifier", "train", "--manifest", str(manifest), "--config", options,
            "--out-dir", str(out), "--no-progress", "--threads", "1"]
    assert main(argv) == 0
    overwrite_mid_file(out / "last.pt")
    assert main(argv) == 0
    assert f"not resuming: {out / 'last.pt'}: classifier checkpoint is damaged: " in caplog.text
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1] and "resumed_from" not in log[0]


@pytest.fixture(scope="module")
def stores(tmp_path_factory, classifier):
    """A manifest with its peaks and proposals stores (made by the stage commands)."""
    folder = tmp_path_factory.mktemp("stores")
    manifest = build_manifest(folder, n_images=6, size=(48, 40))
    checkpoint, peaks = classifier
    assert extract_peaks(manifest, checkpoint, peaks, folder / "peaks.h5") == 0
    options = json.dumps({"max_proposals": 20, "builtin": {"working_size": 48}})
    for i in range(2):
        assert main(["proposals", "make", "--manifest", str(manifest), "--config", options,
                     "--shard", str(i), "--num-shards", "2",
                     "--out", str(folder / f"proposals{i}.h5")]) == 0
    assert main(["proposals", "gather", "--out", str(folder / "proposals.h5"),
                 str(folder / "proposals0.h5"), str(folder / "proposals1.h5")]) == 0
    return folder, manifest


@pytest.mark.parametrize("damaged, rule", [
    ("peaks.h5", "extract_peaks; by hand: tag2mask peaks extract"),
    ("proposals.h5", "propose; by hand: tag2mask proposals make"),
])
def test_damaged_store_is_one_line(tmp_path, stores, damaged, rule):
    """2 KB overwritten mid-file in the peaks or the proposals store given to retrieval: a
    25-line h5py traceback before; now one line naming the file, what could not be read and
    the stage to rerun, and no output."""
    folder, manifest = stores
    inputs = {name: tmp_path / name for name in ("peaks.h5", "proposals.h5")}
    for name, path in inputs.items():
        path.write_bytes((folder / name).read_bytes())
    overwrite_mid_file(inputs[damaged])
    out = tmp_path / "pseudo.h5"
    rc, err = run_cli("pseudo_masks", "make", "--method", "retrieval", "--input",
                      f"peaks={inputs['peaks.h5']}", f"proposals={inputs['proposals.h5']}",
                      "--manifest", manifest, "--config", "{}", "--out", out)
    assert rc == 2
    line = error_line(err, "pseudo_masks make")
    assert line.startswith(f"tag2mask pseudo_masks make: error: {inputs[damaged]}: damaged "
                           "store: ")
    assert line.endswith(f"rerun the stage that wrote it (snakemake --forcerun {rule})")
    assert not out.exists() and no_temp_files(tmp_path)


def test_damaged_shard_is_one_line_in_gather(tmp_path, stores):
    folder, _ = stores
    shards = [tmp_path / f"{i}.h5" for i in range(2)]
    for i, shard in enumerate(shards):
        shard.write_bytes((folder / f"proposals{i}.h5").read_bytes())
    # the global heap (the image names) of the second shard, right after the superblock
    data = bytearray(shards[1].read_bytes())
    at = data.find(b"GCOL")
    data[at + 60:at + 60 + 2048] = b"\xab" * 2048
    shards[1].write_bytes(bytes(data))
    out = tmp_path / "proposals.h5"
    rc, err = run_cli("proposals", "gather", "--out", out, *shards)
    assert rc == 2
    line = error_line(err, "proposals gather")
    assert line.startswith(f"tag2mask proposals gather: error: {shards[1]}: ")
    assert "rerun the stage that wrote it (snakemake --forcerun propose;" in line
    assert not out.exists() and no_temp_files(tmp_path)


@pytest.mark.parametrize("dataset, key, what", [
    ({"kind": "voc", "voc": {"root": "no/such/VOCdevkit"}}, "dataset.voc.root",
     "folder no/such/VOCdevkit not found (relative to {run})"),
    ({"kind": "voc", "voc": {"root": "{tmp}", "train_split": "train_aug"}},
     "dataset.voc.sbd_root", "not set, and this run needs the folder it names"),
    ({"kind": "coco", "coco": {"train_annotations": "{tmp}/missing.json",
                               "train_images": "{tmp}"}},
     "dataset.coco.train_annotations", "file {tmp}/missing.json not found"),
    ({"kind": "tags", "tags": {"images": "{tmp}/labels.csv", "labels_csv": "{tmp}/labels.csv"}},
     "dataset.tags.images", "{tmp}/labels.csv is not a folder"),
    ({"kind": "synthetic", "pretrained_weights": "{tmp}/none.pth"}, "classifier.pretrained_path",
     "file {tmp}/none.pth not found"),
])
def test_config_paths_are_checked_when_parsed(tmp_path, dataset, key, what):
    """A dataset path that does not exist passed `snakemake -n`, which planned the whole run;
    now the workflow stops when parsed, naming the config key and the path (relative paths
    are relative to the working directory, -d)."""
    run = tmp_path / "run"
    (tmp_path / "labels.csv").write_text("image,labels\n")
    fill = lambda v: json.loads(json.dumps(v).replace("{tmp}", str(tmp_path)))  # noqa: E731
    config = {"dataset": fill(dataset)}
    weights = config["dataset"].pop("pretrained_weights", None)
    if weights:
        config["classifier"] = {"pretrained_path": weights}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                           "-d", str(run), "-n", "--configfile", str(tmp_path / "c.yaml")],
                          capture_output=True, text=True, timeout=120)
    err = proc.stdout + proc.stderr
    message = f"config key {key}: " + what.format(tmp=tmp_path, run=run)
    assert proc.returncode != 0 and message in err, err
    assert "Traceback" not in err and len(err.splitlines()) < 10, err
    assert not (run / "results").exists()


def test_relative_config_paths_are_relative_to_the_working_directory(tmp_path):
    run = tmp_path / "run"
    (run / "photos").mkdir(parents=True)
    Image.fromarray(rgb_array(16, 16)).save(run / "photos" / "a.png")
    (run / "tags.csv").write_text("image,labels\na.png,cat\n")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(
        {"dataset": {"kind": "tags", "tags": {"images": "photos", "labels_csv": "tags.csv"}}}))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                           "-d", str(run), "-n", "--configfile", str(tmp_path / "c.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "prepare_dataset" in proc.stdout


def test_hub_weights_load_weights_only(tmp_path, monkeypatch):
    """torchvision's ImageNet download (the ResNets' `pretrained` without a path) goes
    through torch.hub.load_state_dict_from_url with weights_only=True, in the classifier and
    in Mask R-CNN; a damaged cached download is one error naming it."""
    import torchvision

    from tag2mask.classifier.backbones import ResNetBackbone
    from tag2mask.core.errors import InputError
    from tag2mask.maskrcnn.model import _imagenet_state_dict

    reference = torchvision.models.resnet18().state_dict()
    calls = []

    def fake_download(url, **kwargs):
        calls.append((url, kwargs))
        return reference

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    ResNetBackbone("resnet18", stride=8, pretrained=True)
    state = _imagenet_state_dict("resnet18", {"pretrained_path": None})
    assert state.keys() == reference.keys()
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert [u for u, _ in calls] == [url, url]
    assert all(kw["weights_only"] is True and kw["check_hash"] is True for _, kw in calls)

    cached = tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.save(reference, cached)
    overwrite_mid_file(cached, n=4096)
    with pytest.raises(InputError) as e:
        ResNetBackbone("resnet18", stride=8, pretrained=True)
    assert e.value.where == str(cached) and "damaged" in e.value.problem
    assert e.value.problem.endswith("delete it, it is downloaded again")
    assert len(calls) == 2  # the cached file is read, not downloaded again
