"""Segment Anything (SAM; Kirillov et al. 2023) from a checkpoint the user has on disk, built
with the `segment-anything` package's own modules (the optional extra `sam`).

The checkpoint is checked before anything runs (tag2mask.core.torchfiles: it exists, its zip
members pass their CRC check, it loads with weights_only=True), then its architecture is read
from the tensors' names and shapes (`architecture`): image encoder width, depth, heads, window
and global-attention blocks, input size, decoder depth and widths. `model_type` vit_b / vit_l /
vit_h must match it (a vit_h file given as vit_b is an error naming the key); `auto` takes any
SAM-shaped checkpoint (a fine-tuned or reduced one, and the tiny models of the tests).

Nothing is downloaded unless the user sets `url` (then torch's hub cache keeps the file).
"""

import re
from dataclasses import dataclass
from functools import partial

import torch

from ..core.errors import InputError
from ..core.torchfiles import load_torch_file, load_url_state_dict

# the published image encoders: (embed_dim, depth) of each model type
MODEL_TYPES = {"vit_b": (768, 12), "vit_l": (1024, 24), "vit_h": (1280, 32)}
# what SAM normalises its input with (not in the checkpoint: non-persistent buffers)
PIXEL_MEAN, PIXEL_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
DECODER_HEADS = 8  # every published SAM; not recoverable from the tensor shapes


@dataclass(frozen=True)
class Architecture:
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    image_size: int
    window_size: int
    global_attn_indexes: tuple
    mlp_ratio: float
    qkv_bias: bool
    prompt_dim: int
    mask_in_chans: int
    decoder_depth: int
    decoder_mlp_dim: int
    num_multimask_outputs: int
    iou_head_depth: int
    iou_head_hidden_dim: int

    def model_type(self):
        """vit_b / vit_l / vit_h when the encoder is one of the published ones, else None."""
        for name, shape in MODEL_TYPES.items():
            if (self.embed_dim, self.depth) == shape:
                return name
        return None


def _count(state, pattern):
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def architecture(state):
    """The Architecture of a SAM state dict, from its names and shapes; KeyError or
    ValueError when it is not one."""
    enc = "image_encoder."
    patch = state[enc + "patch_embed.proj.weight"]
    embed_dim, patch_size = patch.shape[0], patch.shape[2]
    grid = state[enc + "pos_embed"].shape[1]
    depth = _count(state, r"image_encoder\.blocks\.(\d+)\.")
    rel = [state[f"{enc}blocks.{i}.attn.rel_pos_h"] for i in range(depth)]
    global_blocks = tuple(i for i, r in enumerate(rel) if r.shape[0] == 2 * grid - 1)
    windowed = [r for i, r in enumerate(rel) if i not in global_blocks]
    window = (windowed[0].shape[0] + 1) // 2 if windowed else 0
    head_dim = rel[0].shape[1]
    if depth == 0 or embed_dim % head_dim:
        raise ValueError("image encoder blocks do not match")
    dec = "mask_decoder."
    return Architecture(
        embed_dim=embed_dim, depth=depth, num_heads=embed_dim // head_dim,
        patch_size=patch_size, image_size=grid * patch_size, window_size=window,
        global_attn_indexes=global_blocks,
        mlp_ratio=state[enc + "blocks.0.mlp.lin1.weight"].shape[0] / embed_dim,
        qkv_bias=enc + "blocks.0.attn.qkv.bias" in state,
        prompt_dim=state[enc + "neck.0.weight"].shape[0],
        mask_in_chans=state["prompt_encoder.mask_downscaling.0.weight"].shape[0] * 4,
        decoder_depth=_count(state, r"mask_decoder\.transformer\.layers\.(\d+)\."),
        decoder_mlp_dim=state[dec + "transformer.layers.0.mlp.lin1.weight"].shape[0],
        num_multimask_outputs=state[dec + "mask_tokens.weight"].shape[0] - 1,
        iou_head_depth=_count(state, r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\."),
        iou_head_hidden_dim=state[dec + "iou_prediction_head.layers.0.weight"].shape[0],
    )


def build_sam(arch):
    """An untrained SAM of `arch`, from segment-anything's modules (as its build_sam does)."""
    try:
        from segment_anything.modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder,
                                               Sam, TwoWayTransformer)
    except ImportError:
        raise InputError("proposals.sam", "SAM needs the optional package segment-anything: "
                                          "pip install -e \".[sam]\"") from None
    grid = arch.image_size // arch.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=arch.image_size, patch_size=arch.patch_size, embed_dim=arch.embed_dim,
            depth=arch.depth, num_heads=arch.num_heads, mlp_ratio=arch.mlp_ratio,
            out_chans=arch.prompt_dim, qkv_bias=arch.qkv_bias,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            window_size=arch.window_size, global_attn_indexes=arch.global_attn_indexes),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_dim, image_embedding_size=(grid, grid),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=arch.mask_in_chans),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=arch.num_multimask_outputs,
            transformer=TwoWayTransformer(depth=arch.decoder_depth,
                                          embedding_dim=arch.prompt_dim,
                                          mlp_dim=arch.decoder_mlp_dim,
                                          num_heads=DECODER_HEADS),
            transformer_dim=arch.prompt_dim, iou_head_depth=arch.iou_head_depth,
            iou_head_hidden_dim=arch.iou_head_hidden_dim),
        pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD,
    )


def load_sam(options, key, device):
    """SAM in eval mode on `device`, from options {checkpoint, model_type, url} of the config
    section `key` (e.g. "proposals.sam"); every problem is an InputError naming the key."""
    path, url = options["checkpoint"], options.get("url")
    if path:
        state = load_torch_file(path, f"SAM checkpoint ({key}.checkpoint)")
    elif url:
        state = load_url_state_dict(url, f"{key}.url")
    else:
        raise InputError(f"{key}.checkpoint", "no SAM checkpoint given: set it to the path of "
                                              "a SAM checkpoint (docs/sam.md says where to get "
                                              "one)")
    where = f"{key}.checkpoint ({path or url})"
    if isinstance(state, dict) and "model" in state and "image_encoder.pos_embed" not in state:
        state = state["model"]  # saved with its training state around it
    try:
        arch = architecture(state)
    except (KeyError, ValueError, IndexError, TypeError, AttributeError) as e:
        raise InputError(where, f"not a Segment Anything checkpoint (no or odd {e})") from None
    wanted = options["model_type"]
    if wanted != "auto" and arch.model_type() != wanted:
        raise InputError(f"{key}.model_type", f"is {wanted}, but {path or url} holds a "
                         f"{arch.model_type() or 'non-standard'} image encoder (width "
                         f"{arch.embed_dim}, {arch.depth} blocks); set model_type to "
                         f"{arch.model_type() or 'auto'}")
    model = build_sam(arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InputError(where, f"does not fit the SAM it describes ({str(e)[:300]})") from None
    return model.eval().to(device)


def describe(model):
    """One line about a loaded SAM, for the log."""
    enc = model.image_encoder
    n = sum(p.numel() for p in model.parameters())
    return (f"SAM image encoder width {enc.patch_embed.proj.out_channels}, {len(enc.blocks)} "
            f"blocks, input {enc.img_size} px, {n / 1e6:.1f} M parameters")

