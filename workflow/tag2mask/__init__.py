"""tag2mask: instance segmentation from image-level labels (PRM peaks, proposals, Mask R-CNN)."""

__version__ = "0.1.0"
