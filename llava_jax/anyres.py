"""LLaVA-NeXT "AnyRes" feature layout (Liu et al. 2024, "LLaVA-NeXT: Improved reasoning, OCR, and world
knowledge", the 1.6 blog post; HF `LlavaNextModel.pack_image_features`): for an image of size (h, w) pick the grid
resolution from the pinpoints, the crops' patch features are stitched into one [rows*S, cols*S] grid, the
padding added by the resize-and-pad is cut off ("unpad") and a learned `image_newline` closes every row; the base
(resized whole image) features come first.

The grid math is host-side numpy on top of `common.data.image_ops` (select_best_resolution, unpadded_feature_shape)
and reproduces HF's float64 arithmetic exactly. Its output, an int32 "layout" [..., 6] per image
(rows, cols, top, bottom, left, right: the crop grid and the unpadded window in feature cells), is plain data
that can be fed to a jitted model, so the model itself only gathers.

Token order of one image (S = crop_size // patch_size, h' = bottom - top, w' = right - left):
    base crop: S*S tokens, row-major   |   then for each of the h' rows: w' cells, then image_newline
    => S*S + h' * (w' + 1) tokens.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.data import image_ops

LAYOUT_FIELDS = ("rows", "cols", "top", "bottom", "left", "right")


def grid_shape(image_hw: Sequence[int], pinpoints, crop_size: int) -> tuple[int, int]:
    """(rows, cols) of crops for an image of (height, width) pixels (HF `get_anyres_image_grid_shape`)."""
    h, w = image_ops.select_best_resolution((int(image_hw[0]), int(image_hw[1])), [tuple(p) for p in pinpoints])
    return h // crop_size, w // crop_size


def num_crops(image_hw: Sequence[int], pinpoints, crop_size: int) -> int:
    """rows * cols + 1 (the base image) — HF `image_size_to_num_patches`."""
    rows, cols = grid_shape(image_hw, pinpoints, crop_size)
    return rows * cols + 1


def image_layout(image_sizes, pinpoints, crop_size: int, patch_size: int) -> np.ndarray:
    """image_sizes int [..., 2] (height, width) -> int32 layout [..., 6] (see LAYOUT_FIELDS).

    Zero sizes (padding image slots) give an all-zero layout; the model ignores masked slots anyway."""
    sizes = np.asarray(image_sizes)
    if sizes.shape[-1:] != (2,):
        raise ValueError(f"image_sizes must be [..., 2] (height, width), got shape {sizes.shape}")
    side = crop_size // patch_size
    flat = sizes.reshape(-1, 2)
    out = np.zeros((flat.shape[0], 6), np.int32)
    for i, (h, w) in enumerate(flat.tolist()):
        if h <= 0 or w <= 0:
            continue
        rows, cols = grid_shape((h, w), pinpoints, crop_size)
        top, bottom, left, right = image_ops.unpadded_feature_shape((h, w), (rows * side, cols * side))
        out[i] = (rows, cols, top, bottom, left, right)
    return out.reshape(sizes.shape[:-1] + (6,))


def tokens_per_image(layout: np.ndarray, side: int) -> np.ndarray:
    """Feature tokens of each image: S*S + h' * (w' + 1); 0 for an all-zero (padding) layout."""
    layout = np.asarray(layout)
    h = layout[..., 3] - layout[..., 2]
    w = layout[..., 5] - layout[..., 4]
    return np.where(layout[..., 0] > 0, side * side + h * (w + 1), 0)


def max_crops(pinpoints, crop_size: int) -> int:
    """The most crops (base included) any image can need: the P axis of padded pixel_values."""
    return max((h // crop_size) * (w // crop_size) for h, w in pinpoints) + 1


def preprocess(images: Sequence[np.ndarray], pinpoints, crop_size: int, pad_to: int | None = None):
    """uint8 images -> (pixel_values float32 [N, P, crop, crop, 3] with zero crops past each image's count,
    image_sizes int32 [N, 2]). `pad_to` fixes P (default: the most any pinpoint needs)."""
    pad_to = pad_to or max_crops(pinpoints, crop_size)
    pixels = np.zeros((len(images), pad_to, crop_size, crop_size, 3), np.float32)
    for i, img in enumerate(images):
        crops = image_ops.anyres_preprocess(img, [list(p) for p in pinpoints], crop_size)
        if len(crops) > pad_to:
            raise ValueError(f"image {i} needs {len(crops)} crops > pad_to={pad_to}")
        pixels[i, :len(crops)] = crops
    sizes = np.asarray([img.shape[:2] for img in images], np.int32).reshape(len(images), 2)
    return pixels, sizes
