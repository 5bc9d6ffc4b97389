"""Stage `dataset`: read a dataset (synthetic, VOC, COCO, tags) into a manifest (tags only)
and COCO ground truth (evaluation only). Readers: `cli.READERS`; what they share: `common`."""
