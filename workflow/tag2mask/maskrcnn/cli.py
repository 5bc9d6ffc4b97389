"""`tag2mask maskrcnn ...`: Mask R-CNN trained on a pseudo-mask store, and its predictions.

    tag2mask maskrcnn train --store pseudo_masks.h5 --manifest M --config C --out-dir DIR
    tag2mask maskrcnn predict --checkpoint DIR/model.pt --manifest M --split val --out P.json
    tag2mask maskrcnn predict-images --checkpoint DIR/model.pt --images FOLDER --out P.json \\
        [--overlays DIR]

train writes model.pt, log.jsonl and checkpoints/ (one per epoch; a restarted run resumes
after the last one; tag2mask.maskrcnn.train); --processes N > 1 trains on N processes
(torchrun, DistributedDataParallel, one GPU each on CUDA; tag2mask.core.distributed). Ground
truth is never read. predict writes COCO results JSON that pycocotools loads unchanged, of a
manifest split (everything scoring maskrcnn.score_threshold, as mAP needs); predict-images of
a folder of new images (what scores maskrcnn.images_score_threshold, sub-folders too with
maskrcnn.images_recursive), with a sidecar naming the images and overlay PNGs
(tag2mask.maskrcnn.predict). The upper bound and the self-training rounds use train and
predict on their own stores.
"""

import json
import logging
from pathlib import Path

from ..core import cli_args as cli
from ..core.launch import relaunch, training_processes

log = logging.getLogger(__name__)


def add_actions(actions):
    p = cli.add_action(actions, "train", "train Mask R-CNN on a pseudo-mask store", __doc__,
                       run_train)
    p.add_argument("--store", required=True, type=Path, help="pseudo_masks HDF5 store")
    cli.add_training(p, "maskrcnn", "model.pt, log.jsonl and checkpoints/")

    p = cli.add_action(actions, "predict", "Mask R-CNN predictions of a split as COCO results",
                       __doc__, run_predict)
    p.add_argument("--checkpoint", required=True, type=Path, help="model.pt of `train`")
    cli.add_manifest(p)
    p.add_argument("--split", default="val", help="manifest split to predict (default: val)")
    _prediction_arguments(p)

    p = cli.add_action(actions, "predict-images", "Mask R-CNN predictions of a folder of images",
                       __doc__, run_predict_images)
    p.add_argument("--checkpoint", required=True, type=Path, help="model.pt of `train`")
    p.add_argument("--images", required=True, type=Path, help="a folder of images")
    _prediction_arguments(p)


def _prediction_arguments(p):
    p.add_argument("--out", required=True, type=Path, help="COCO results JSON to write")
    p.add_argument("--overlays", type=Path, help="also write overlay PNGs into this folder")
    cli.add_config(p, "maskrcnn (its prediction keys: score_threshold, mask_threshold, ...)",
                   required=False)
    p.add_argument("--batch-size", type=int, help="images per batch (default: predict_batch_size)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: the config's")
    cli.add_threads(p)
    cli.add_progress(p)


def run_train(args):
    from ..core.config import stage_options

    options = stage_options(args.config, "maskrcnn", "train", args.runtime)
    relaunch(training_processes(args, options))  # (before torch is imported)
    from .train import train

    cli.set_threads(args.threads)
    train(options, args.store, args.manifest, args.out_dir, progress=not args.no_progress)


def run_predict(args):
    _predict(args, folder=False)


def run_predict_images(args):
    _predict(args, folder=True)


def _predict(args, folder):
    from ..core.atomic import write_json
    from ..core.config import stage_options
    from ..core.devices import resolve_device
    from .model import load_checkpoint
    from .predict import (
        ResultsWriter,
        configure,
        folder_items,
        manifest_items,
        predict,
    )

    cli.set_threads(args.threads)
    # the model's training options, and prediction's own (core/schema.yaml: x-read-by)
    given = stage_options(args.config, "maskrcnn", args.action, args.runtime)
    if folder:
        items, classes = folder_items(args.images, given["images_recursive"]), None
    else:
        items, classes = manifest_items(args.manifest, args.split)
    model, payload = load_checkpoint(args.checkpoint, classes)  # other classes: InputError
    options = {**json.loads(payload["config"]), **given}
    if folder:  # new images: the confident detections only
        options["score_threshold"] = given["images_score_threshold"]
    if args.batch_size:
        options["predict_batch_size"] = args.batch_size
    if args.device:
        options["device"] = args.device
    device = resolve_device(options["device"], "maskrcnn.device")
    model.to(device)
    configure(model, options)
    # results streamed to the file as they come (memory flat in the number of detections)
    with ResultsWriter(args.out) as out:
        _, infos, stats = predict(model, items, options, device, payload["class_names"],
                                  args.overlays, progress=not args.no_progress,
                                  skip_bad=folder, sink=out.write)
    if folder:
        # a COCO instances file without annotations: COCO(it).loadRes(out) reads the results
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(payload["class_names"])]
        write_json(f"{args.out}.images.json",
                   {"images": infos, "categories": categories, "annotations": []}, indent=None)
    log.info("%d images (%d unreadable, skipped), %d detections, %.1f images/s -> %s",
             stats["images"], stats["skipped"], stats["detections"], stats["images_per_s"] or 0,
             args.out)
