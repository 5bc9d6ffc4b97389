"""What the damage checks on reading cost: strict JPEG decoding per image (dataset prepare) and
the zip CRC check of a checkpoint before torch.load.

    .venv/bin/python benchmarks/input_checks.py [--images DIR] [--checkpoint-mb 20] [--repeats 3]

- Images (default: voc-mini's JPEGImages, 288 photos): per image, the full PIL decode that
  dataset prepare always did (the baseline), the structural walk (`jpeg_structure`) and the
  strict libjpeg decode (`strict_decode.jpeg_decode_problem`, grey at 1/8 scale) that the
  damage check adds; `rejected` lists the images the checks would skip (should be none on
  sound photos). Files are read once before timing (warm page cache); best of --repeats.
- Checkpoint: a state dict of float32 tensors of about --checkpoint-mb MB saved with
  torch.save; the time of `torchfiles.zip_problem` (every member's CRC-32) against
  torch.load(weights_only=True) of the same file.
Prints one JSON object.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))
from tag2mask.core.torchfiles import zip_problem  # noqa: E402
from tag2mask.dataset.jpeg_structure import jpeg_problem  # noqa: E402
from tag2mask.dataset.strict_decode import jpeg_decode_problem  # noqa: E402

VOC_MINI = Path(__file__).resolve().parents[2] / "shared/data/voc-mini/VOC2012/JPEGImages"


def best_ms_per_item(fn, items, repeats):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for x in items:
            fn(x)
        best = min(best, time.perf_counter() - t)
    return round(best / len(items) * 1000, 3)


def pil_decode(path):
    from PIL import Image
    with Image.open(path) as img:
        img.load()


def images(folder, repeats):
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    for f in files:
        f.read_bytes()
    rejected = {str(f): jpeg_problem(f) or jpeg_decode_problem(f) for f in files}
    return {
        "images_folder": str(folder),
        "images": len(files),
        "pil_full_decode_ms": best_ms_per_item(pil_decode, files, repeats),
        "structure_walk_ms": best_ms_per_item(jpeg_problem, files, repeats),
        "strict_decode_ms": best_ms_per_item(jpeg_decode_problem, files, repeats),
        "rejected": {k: v for k, v in rejected.items() if v},
    }


def checkpoint(mb, repeats):
    import torch
    n = int(mb * 2**20 / 4 / 16)
    state = {f"layer{i}.weight": torch.randn(n) for i in range(16)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        torch.save({"model": state}, path)
        path.read_bytes()
        crc = best_ms_per_item(zip_problem, [path], repeats)
        load = best_ms_per_item(lambda p: torch.load(p, map_location="cpu", weights_only=True),
                                [path], repeats)
        return {"checkpoint_mb": round(path.stat().st_size / 2**20, 1),
                "zip_crc_check_ms": crc, "torch_load_ms": load,
                "crc_check_vs_load": round(crc / load, 3)}


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=VOC_MINI)
    p.add_argument("--checkpoint-mb", type=float, default=20)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    out = {}
    if args.images.is_dir():
        out.update(images(args.images, args.repeats))
    else:
        out["images"] = f"{args.images} not found: skipped"
    out.update(checkpoint(args.checkpoint_mb, args.repeats))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
