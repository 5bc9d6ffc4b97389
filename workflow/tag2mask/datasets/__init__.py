"""Dataset readers. Each turns one source layout into a manifest plus COCO ground truth.

Reader contract: a module in this package with

    read(options: dict, out_dir: Path, limits: dict) -> Prepared

`options` is the config section of that dataset kind, `out_dir` the dataset output folder
(readers that create images, such as the synthetic generator or the downscaler of large
images, write them under it), `limits` holds max_image_pixels and large_images.
"""

from dataclasses import dataclass, field

from ..manifest import Manifest

READERS = {
    "synthetic": "tag2mask.datasets.synthetic",
    "voc": "tag2mask.datasets.voc",
    "coco": "tag2mask.datasets.coco",
    "tags": "tag2mask.datasets.tags",
}


@dataclass
class Prepared:
    manifest: Manifest
    # split -> COCO instances dict (tag2mask.groundtruth.CocoBuilder.to_dict()); empty when
    # the dataset has no ground truth
    ground_truth: dict = field(default_factory=dict)
