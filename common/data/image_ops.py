"""Image preprocessing in numpy/PIL: decoding with bad-image handling (non-RGB images skipped unless
`convert_image_modes=True`), normalisation, resize/crop, LLaVA pad-to-square,
LLaVA-NeXT anyres, InternVL dynamic tiling, video frame sampling. Images are uint8 [H, W, 3] until `normalize`,
which gives float32 [H, W, 3] (NHWC when batched)."""
from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from common.data.records import (
    CMYK_IMAGE,
    CORRUPT_IMAGE,
    EMPTY_IMAGE,
    GREYSCALE_IMAGE,
    HIGH_BIT_DEPTH_IMAGE,
    MISSING_IMAGE,
    OTHER_MODE_IMAGE,
    PALETTE_IMAGE,
    RGBA_IMAGE,
    BadRecord,
    record_note,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# InternViT (VITA-1.5's vision tower) uses the ImageNet statistics.
INTERNVIT_MEAN, INTERNVIT_STD = IMAGENET_MEAN, IMAGENET_STD
NORMALIZATION = {"clip": (CLIP_MEAN, CLIP_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
                 "internvit": (IMAGENET_MEAN, IMAGENET_STD)}

LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}


# ----------------------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------------------
def image_mode_reason(img: Image.Image, rawmode: str | None = None) -> str | None:
    """Why a decoded PIL image is not plain 8-bit RGB (a `records` *_image reason), or None when it is.

    `rawmode` is the decoder's raw mode read before `load()` (e.g. 'RGB;16B' for a 48-bit PNG, which PIL opens as
    mode RGB with the low bytes dropped)."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F") or (rawmode is not None and ";16" in rawmode):
        return HIGH_BIT_DEPTH_IMAGE
    if mode == "RGB":
        return None
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in img.info):
        return RGBA_IMAGE
    if mode in ("L", "1"):
        return GREYSCALE_IMAGE
    if mode == "P":
        return PALETTE_IMAGE
    if mode == "CMYK":
        return CMYK_IMAGE
    return OTHER_MODE_IMAGE


def _rawmode(img: Image.Image) -> str | None:
    """The raw mode of the first tile of a not-yet-loaded image (PNG / TIFF), else None."""
    for tile in getattr(img, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        raw = args if isinstance(args, str) else (
            args[0] if isinstance(args, tuple) and args and isinstance(args[0], str) else None)
        if raw:
            return raw
    return None


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 RGB [H, W, 3] (transparent pixels onto white, 16-bit / float scaled to 0..255)."""
    reason = image_mode_reason(img)  # by mode alone: a 48-bit PNG already decoded to mode RGB converts as RGB
    if reason is None:
        return np.asarray(img, dtype=np.uint8).copy()
    if reason == HIGH_BIT_DEPTH_IMAGE:
        a = np.asarray(img).astype(np.float64)
        if img.mode == "F":
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        else:
            a = a / 257.0  # 16-bit (or int) full range 0..65535 -> 0..255
        g = np.clip(np.round(a), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=-1)
    if reason == RGBA_IMAGE:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparent pixels become white, as in HF
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8).copy()
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _array_mode_reason(a: np.ndarray) -> str | None:
    if a.dtype == np.uint16:
        return HIGH_BIT_DEPTH_IMAGE
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 1):
        return GREYSCALE_IMAGE
    if a.ndim == 3 and a.shape[-1] == 4:
        return RGBA_IMAGE
    return None


def _array_to_rgb(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint16:
        a = np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(np.round(a * 255.0 if a.dtype.kind == "f" else a), 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.shape[-1] == 4:  # onto white, as for PIL images
        alpha = a[..., 3:].astype(np.float32) / 255.0
        a = np.clip(np.round(a[..., :3] * alpha + 255.0 * (1.0 - alpha)), 0, 255).astype(np.uint8)
    return a


def _mode_problem(reason: str | None, detail: str, convert_image_modes: bool, counter) -> None:
    """Skip (raise BadRecord) or, when converting, note the conversion under the same reason."""
    if reason is None:
        return
    if not convert_image_modes:
        raise BadRecord(reason, f"{detail} (convert_image_modes=True converts such images to RGB instead)")
    record_note(reason)
    if counter is not None:
        counter.note(reason)


def decode_image(src, counter=None, convert_image_modes: bool = False) -> np.ndarray:
    """bytes / path / PIL image / array -> uint8 RGB [H, W, 3].

    Missing files, zero-size files or images, and undecodable data raise BadRecord(missing_image / empty_image /
    corrupt_image). Images that are not 8-bit RGB raise BadRecord too, by default, with a reason per kind
    (greyscale_image, rgba_image, cmyk_image, 16bit_image, palette_image, other_mode_image: see `records`), so
    the pipeline skips and counts them. With `convert_image_modes=True` they are converted to 8-bit RGB instead
    (alpha onto white, 16-bit scaled by 1/257) and the conversion is noted under the same reason, in `counter` if
    given and in the pipeline's per-record notes (`SkipCounter.summary()["converted"]`). Float arrays in [0, 1]
    are scaled to uint8 either way.
    """
    if isinstance(src, np.ndarray):
        a = src
        if a.size == 0:
            raise BadRecord(EMPTY_IMAGE, f"array of shape {a.shape}")
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (1, 3, 4)):
            raise BadRecord(CORRUPT_IMAGE, f"array of shape {a.shape} is not an image")
        _mode_problem(_array_mode_reason(a), f"array of shape {a.shape}, dtype {a.dtype}", convert_image_modes, counter)
        return a if a.dtype == np.uint8 and a.ndim == 3 and a.shape[-1] == 3 else _array_to_rgb(a)
    if isinstance(src, Image.Image):
        img, where, rawmode = src, "<PIL image>", _rawmode(src)
    else:
        if isinstance(src, (str, os.PathLike)):
            path = os.fspath(src)
            if not os.path.isfile(path):
                raise BadRecord(MISSING_IMAGE, path)
            with open(path, "rb") as f:
                data = f.read()
            where = path
        elif isinstance(src, (bytes, bytearray, memoryview)):
            data, where = bytes(src), "<bytes>"
        else:
            raise BadRecord(CORRUPT_IMAGE, f"cannot decode an image from {type(src).__name__}")
        if len(data) == 0:
            raise BadRecord(EMPTY_IMAGE, where)
        try:
            img = Image.open(io.BytesIO(data))
            rawmode = _rawmode(img)
            img.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise BadRecord(CORRUPT_IMAGE, f"{where}: {e}") from None
    if img.width == 0 or img.height == 0:
        raise BadRecord(EMPTY_IMAGE, f"{img.width}x{img.height}")
    _mode_problem(image_mode_reason(img, rawmode), f"{where}: mode {img.mode}", convert_image_modes, counter)
    try:
        return _pil_to_rgb(img)
    except (OSError, ValueError) as e:
        raise BadRecord(CORRUPT_IMAGE, str(e)) from None


def encode_png(img: np.ndarray) -> bytes:
    """uint8 [H, W, 3] (or [H, W]) -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# Basic ops
# ----------------------------------------------------------------------------------------------------------------
def resize(img: np.ndarray, size_hw: Sequence[int], resample: str = "bicubic") -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [h, w, 3] with PIL (the same kernels HF's PIL image processors use)."""
    h, w = int(size_hw[0]), int(size_hw[1])
    if img.shape[:2] == (h, w):
        return img
    return np.asarray(Image.fromarray(img).resize((w, h), resample=_RESAMPLE[resample]))


def shortest_edge_size(hw: Sequence[int], shortest_edge: int) -> tuple[int, int]:
    """Output (h, w) with the short side = shortest_edge, the long side scaled and truncated (as HF)."""
    h, w = hw
    short, long = (h, w) if h <= w else (w, h)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_short, new_long) if h <= w else (new_long, new_short)


def resize_shortest_edge(img: np.ndarray, shortest_edge: int, resample: str = "bicubic") -> np.ndarray:
    return resize(img, shortest_edge_size(img.shape[:2], shortest_edge), resample)


def center_crop(img: np.ndarray, size_hw: Sequence[int]) -> np.ndarray:
    """Crops the centre [h, w]; pads with zeros first when the image is smaller (as HF's center_crop)."""
    ch, cw = int(size_hw[0]), int(size_hw[1])
    h, w = img.shape[:2]
    if h < ch or w < cw:
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        img = np.pad(img, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
        h, w = img.shape[:2]
    top, left = (h - ch) // 2, (w - cw) // 2
    return img[top : top + ch, left : left + cw]


def normalize(img: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """uint8 [..., 3] -> float32 [..., 3]: (x / 255 - mean) / std."""
    if isinstance(mean, str):
        mean, std = NORMALIZATION[mean]
    x = img.astype(np.float32) * np.float32(1.0 / 255.0)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def clip_preprocess(img: np.ndarray, size: int = 224, crop: int | None = None, mean=CLIP_MEAN,
                    std=CLIP_STD) -> np.ndarray:
    """CLIP: resize the shortest edge to `size` (bicubic), centre crop `crop` (default size), normalise -> [c, c, 3]."""
    crop = crop or size
    return normalize(center_crop(resize_shortest_edge(img, size), (crop, crop)), mean, std)


def square_resize_preprocess(img: np.ndarray, size: int = 448, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """InternViT-style: bicubic resize straight to size x size, normalise -> [size, size, 3]."""
    return normalize(resize(img, (size, size)), mean, std)


def expand_to_square(img: np.ndarray, fill="mean") -> np.ndarray:
    """LLaVA's expand2square: pad the short side symmetrically (extra pixel after) to a square.

    fill: an RGB triple of 0..255 ints, 'mean' for the CLIP mean colour (LLaVA's `tuple(int(x*255) for x in
    image_mean)`), or 'image_mean' for the mean colour of this image.
    """
    h, w = img.shape[:2]
    if h == w:
        return img
    if isinstance(fill, str):
        fill = (tuple(int(x * 255) for x in CLIP_MEAN) if fill == "mean"
                else tuple(int(v) for v in img.reshape(-1, 3).mean(0)))
    s = max(h, w)
    out = np.empty((s, s, 3), np.uint8)
    out[...] = np.asarray(fill, np.uint8)
    top, left = (s - h) // 2, (s - w) // 2
    out[top : top + h, left : left + w] = img
    return out


# ----------------------------------------------------------------------------------------------------------------
# LLaVA-NeXT anyres
# ----------------------------------------------------------------------------------------------------------------
def select_best_resolution(original_hw: Sequence[int], possible_resolutions) -> tuple[int, int]:
    """The (h, w) pinpoint maximising the effective resolution, then minimising the waste (HF / LLaVA-NeXT)."""
    oh, ow = original_hw
    best, best_eff, best_waste = None, 0, float("inf")
    for h, w in possible_resolutions:
        scale = min(w / ow, h / oh)
        dw, dh = int(ow * scale), int(oh * scale)
        eff = min(dw * dh, ow * oh)
        waste = w * h - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (h, w), eff, waste
    return best


def _fit_size(original_hw, target_hw) -> tuple[int, int]:
    oh, ow = original_hw
    th, tw = target_hw
    sw, sh = tw / ow, th / oh
    if sw < sh:
        return min(math.ceil(oh * sw), th), tw
    return th, min(math.ceil(ow * sh), tw)


def anyres_grid_shape(original_hw: Sequence[int], pinpoints=LLAVA_NEXT_PINPOINTS, crop: int = 336) -> tuple[int, int]:
    """(rows, cols) of crops for an image of size (h, w)."""
    h, w = select_best_resolution(original_hw, pinpoints)
    return h // crop, w // crop


def anyres_num_patches(original_hw: Sequence[int], pinpoints=LLAVA_NEXT_PINPOINTS, crop: int = 336) -> int:
    """Number of crops including the base image."""
    rows, cols = anyres_grid_shape(original_hw, pinpoints, crop)
    return rows * cols + 1


def anyres_crops(img: np.ndarray, pinpoints=LLAVA_NEXT_PINPOINTS, crop: int = 336) -> list[np.ndarray]:
    """uint8 image -> [base resized to crop x crop] + row-major crops of the best-fit canvas (aspect kept, zero pad)."""
    best = select_best_resolution(img.shape[:2], pinpoints)
    nh, nw = _fit_size(img.shape[:2], best)
    resized = resize(img, (nh, nw))
    py, ry = divmod(best[0] - nh, 2)
    px, rx = divmod(best[1] - nw, 2)
    canvas = np.pad(resized, ((py, py + ry), (px, px + rx), (0, 0)))
    crops = [canvas[i : i + crop, j : j + crop] for i in range(0, best[0], crop) for j in range(0, best[1], crop)]
    return [resize(img, (crop, crop))] + crops


def anyres_preprocess(img: np.ndarray, pinpoints=LLAVA_NEXT_PINPOINTS, crop: int = 336, mean=CLIP_MEAN,
                      std=CLIP_STD) -> np.ndarray:
    """LLaVA-NeXT pixel values: float32 [1 + rows * cols, crop, crop, 3]."""
    return np.stack([clip_preprocess(c, crop, crop, mean, std) for c in anyres_crops(img, pinpoints, crop)])


def unpadded_feature_shape(original_hw: Sequence[int], feature_hw: Sequence[int]) -> tuple[int, int, int, int]:
    """For a crop-feature grid of (H, W) cells, the (top, bottom, left, right) bounds keeping the non-padding part.

    Same rule as LLaVA-NeXT's unpad_image: the side that was padded loses `(H - round(oh * H / ...)) // 2` on each side.
    """
    oh, ow = original_hw
    ch, cw = feature_hw
    if ow / oh > cw / ch:
        nh = int(round(oh * (cw / ow), 7))
        pad = (ch - nh) // 2
        return pad, ch - pad, 0, cw
    nw = int(round(ow * (ch / oh), 7))
    pad = (cw - nw) // 2
    return 0, ch, pad, cw - pad


def unpad_features(features: np.ndarray, original_hw: Sequence[int]) -> np.ndarray:
    """features [H, W, C] (the crops' patch features stitched into one grid) -> [h, w, C] without the padding."""
    top, bottom, left, right = unpadded_feature_shape(original_hw, features.shape[:2])
    return features[top:bottom, left:right]


def anyres_num_feature_tokens(original_hw, pinpoints=LLAVA_NEXT_PINPOINTS, crop: int = 336, patch: int = 14) -> int:
    """LLaVA-NeXT tokens per image: base (crop/patch)^2 + unpadded grid cells + one image_newline per grid row."""
    rows, cols = anyres_grid_shape(original_hw, pinpoints, crop)
    side = crop // patch
    top, bottom, left, right = unpadded_feature_shape(original_hw, (rows * side, cols * side))
    return side * side + (bottom - top) * (right - left) + (bottom - top)


# ----------------------------------------------------------------------------------------------------------------
# InternVL dynamic tiling (VITA-1.5)
# ----------------------------------------------------------------------------------------------------------------
def internvl_target_grids(min_num: int = 1, max_num: int = 12) -> list[tuple[int, int]]:
    """Candidate (cols, rows) grids with min_num <= cols * rows <= max_num, sorted by tile count (InternVL order)."""
    ratios = set(
        (i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    )
    return sorted(ratios, key=lambda x: x[0] * x[1])


def internvl_grid(width: int, height: int, min_num: int = 1, max_num: int = 12,
                  image_size: int = 448) -> tuple[int, int]:
    """(cols, rows): the grid whose aspect ratio is closest to the image's; on a tie the later (larger) grid wins
    when the image area is more than half of the grid's pixel area."""
    aspect = width / height
    best_diff, best = float("inf"), (1, 1)
    area = width * height
    for cols, rows in internvl_target_grids(min_num, max_num):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best_diff, best = diff, (cols, rows)
        elif diff == best_diff and area > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


def internvl_tiles(img: np.ndarray, min_num: int = 1, max_num: int = 12, image_size: int = 448,
                   use_thumbnail: bool = True) -> list[np.ndarray]:
    """uint8 image -> row-major image_size tiles of the resized image (+ a thumbnail when more than one tile)."""
    h, w = img.shape[:2]
    cols, rows = internvl_grid(w, h, min_num, max_num, image_size)
    big = resize(img, (rows * image_size, cols * image_size))
    tiles = [big[r * image_size : (r + 1) * image_size, c * image_size : (c + 1) * image_size]
             for r in range(rows) for c in range(cols)]
    if use_thumbnail and len(tiles) != 1:
        tiles.append(resize(img, (image_size, image_size)))
    return tiles


def internvl_preprocess(img: np.ndarray, min_num: int = 1, max_num: int = 12, image_size: int = 448,
                        use_thumbnail: bool = True) -> np.ndarray:
    """float32 [num_tiles, image_size, image_size, 3], ImageNet-normalised."""
    return np.stack([normalize(t, IMAGENET_MEAN, IMAGENET_STD)
                     for t in internvl_tiles(img, min_num, max_num, image_size, use_thumbnail)])


# ----------------------------------------------------------------------------------------------------------------
# Video
# ----------------------------------------------------------------------------------------------------------------
def sample_frame_indices(num_total: int, min_frames: int = 4, max_frames: int = 16, num_frames: int | None = None,
                         rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices of the frames to keep: `num_frames` (default: the total clipped to [min, max]) spread uniformly
    over the clip (frames repeat when the clip is shorter than min_frames). With `rng`, each index is drawn
    at random inside its segment (training-time jitter)."""
    if num_total <= 0:
        raise ValueError("a video needs at least one frame")
    n = num_frames or int(np.clip(num_total, min_frames, max_frames))
    if rng is None:
        return np.round(np.linspace(0, num_total - 1, n)).astype(np.int64)
    edges = np.linspace(0, num_total, n + 1)
    lo, hi = np.floor(edges[:-1]).astype(np.int64), np.maximum(np.floor(edges[1:]).astype(np.int64),
                                                               np.floor(edges[:-1]).astype(np.int64) + 1)
    return np.minimum(rng.integers(lo, hi), num_total - 1)


def sample_video(frames: np.ndarray, min_frames: int = 4, max_frames: int = 16, num_frames: int | None = None,
                 rng=None) -> np.ndarray:
    """frames [T, H, W, 3] -> [n, H, W, 3] sampled with `sample_frame_indices`."""
    return frames[sample_frame_indices(len(frames), min_frames, max_frames, num_frames, rng)]
