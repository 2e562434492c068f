"""Image preprocessing vs HF's image processors and the public reference algorithms, on real photographs."""
import chex
import numpy as np
from PIL import Image

from common.data import image_ops as ops


def test_clip_preprocess_matches_hf(real_images):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    hf = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    for name, img in real_images.items():
        ref = hf(images=img, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        ours = ops.clip_preprocess(img, 224)
        assert ours.shape == (224, 224, 3) and ours.dtype == np.float32
        chex.assert_trees_all_close(ours, ref, atol=1e-5, rtol=1e-7, custom_message=name)


def test_llava_next_anyres_matches_hf(real_images):
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    hf = LlavaNextImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    for name in ("coffee", "grace_hopper"):
        img = real_images[name]
        ref = hf(images=img, return_tensors="np")["pixel_values"][0].transpose(0, 2, 3, 1)
        ours = ops.anyres_preprocess(img, crop=336)
        chex.assert_equal_shape([ours, ref], custom_message=name)
        chex.assert_trees_all_close(ours, ref, atol=1e-5, rtol=1e-7, custom_message=name)


def test_anyres_grid_helpers_match_hf():
    import torch
    from transformers.image_processing_utils import select_best_resolution
    from transformers.models.llava_next.modeling_llava_next import (
        get_anyres_image_grid_shape,
        image_size_to_num_patches,
        unpad_image,
    )
    from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor

    pins = ops.LLAVA_NEXT_PINPOINTS
    rng = np.random.default_rng(0)
    sizes = [(480, 640), (640, 480), (336, 336), (100, 1000), (1000, 90), (2000, 2000), (337, 673)]
    sizes += [tuple(int(v) for v in rng.integers(20, 2000, 2)) for _ in range(40)]
    for hw in sizes:
        assert ops.select_best_resolution(hw, pins) == select_best_resolution(hw, pins)
        assert ops.anyres_grid_shape(hw, pins, 336) == get_anyres_image_grid_shape(list(hw), pins, 336)
        assert ops.anyres_num_patches(hw, pins, 336) == image_size_to_num_patches(list(hw), pins, 336)
        rows, cols = ops.anyres_grid_shape(hw, pins, 336)
        grid = torch.zeros(1, rows * 24, cols * 24)
        ref = unpad_image(grid, list(hw))
        ours = ops.unpad_features(np.zeros((rows * 24, cols * 24, 1)), hw)
        assert ours.shape[:2] == tuple(ref.shape[1:]), hw
        unpadded, newline = LlavaNextProcessor._get_unpadded_features(None, hw[0], hw[1], 24, 24, rows, cols)
        assert ops.anyres_num_feature_tokens(hw, pins, 336, 14) == 24 * 24 + unpadded + newline


# --- InternVL's public dynamic_preprocess / LLaVA's expand2square, transcribed as the reference -----------------
def _ref_find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height, image_size):
    best_ratio_diff = float("inf")
    best_ratio = (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff:
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    return best_ratio


def _ref_dynamic_preprocess(image, min_num=1, max_num=12, image_size=448, use_thumbnail=False):
    orig_width, orig_height = image.size
    aspect_ratio = orig_width / orig_height
    target_ratios = set(
        (i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
        if i * j <= max_num and i * j >= min_num
    )
    target_ratios = sorted(target_ratios, key=lambda x: x[0] * x[1])
    target_aspect_ratio = _ref_find_closest_aspect_ratio(aspect_ratio, target_ratios, orig_width, orig_height,
                                                         image_size)
    target_width = image_size * target_aspect_ratio[0]
    target_height = image_size * target_aspect_ratio[1]
    blocks = target_aspect_ratio[0] * target_aspect_ratio[1]
    resized_img = image.resize((target_width, target_height), Image.BICUBIC)
    processed_images = []
    for i in range(blocks):
        box = (
            (i % (target_width // image_size)) * image_size,
            (i // (target_width // image_size)) * image_size,
            ((i % (target_width // image_size)) + 1) * image_size,
            ((i // (target_width // image_size)) + 1) * image_size,
        )
        processed_images.append(resized_img.crop(box))
    if use_thumbnail and len(processed_images) != 1:
        processed_images.append(image.resize((image_size, image_size), Image.BICUBIC))
    return processed_images


def _ref_expand2square(pil_img, background_color):
    width, height = pil_img.size
    if width == height:
        return pil_img
    elif width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(pil_img.mode, (height, height), background_color)
        result.paste(pil_img, ((height - width) // 2, 0))
        return result


def test_internvl_tiling_matches_reference(real_images):
    for name, img in real_images.items():
        for max_num in (1, 6, 12):
            ref = _ref_dynamic_preprocess(Image.fromarray(img), 1, max_num, 112, use_thumbnail=True)
            ours = ops.internvl_tiles(img, 1, max_num, 112, use_thumbnail=True)
            assert len(ours) == len(ref), (name, max_num)
            for a, b in zip(ours, ref):
                chex.assert_trees_all_equal(a, np.asarray(b))
    # grid choice on many aspect ratios and sizes, including the tie rule
    for w, h in [(448, 448), (896, 448), (1000, 300), (300, 1000), (1344, 896), (4000, 100), (50, 60), (900, 900)]:
        ref = _ref_dynamic_preprocess(Image.new("RGB", (w, h)), 1, 12, 448)
        cols, rows = ops.internvl_grid(w, h, 1, 12, 448)
        assert cols * rows == len(ref)
    out = ops.internvl_preprocess(real_images["coffee"], 1, 12, 56)
    assert out.shape[1:] == (56, 56, 3) and out.dtype == np.float32


def test_expand_to_square_matches_llava(real_images):
    mean_colour = tuple(int(x * 255) for x in ops.CLIP_MEAN)
    for name in ("coffee", "chelsea"):
        img = real_images[name]
        ref = np.asarray(_ref_expand2square(Image.fromarray(img), mean_colour))
        chex.assert_trees_all_equal(ops.expand_to_square(img, "mean"), ref)
        tall = np.ascontiguousarray(img.transpose(1, 0, 2))
        ref_tall = np.asarray(_ref_expand2square(Image.fromarray(tall), mean_colour))
        chex.assert_trees_all_equal(ops.expand_to_square(tall, "mean"), ref_tall)
    sq = ops.expand_to_square(real_images["coffee"], "image_mean")
    chex.assert_shape(sq, (600, 600, 3))


def test_normalisation_constants_and_values():
    assert ops.NORMALIZATION["internvit"] == (ops.IMAGENET_MEAN, ops.IMAGENET_STD)
    x = np.full((2, 2, 3), 255, np.uint8)
    chex.assert_trees_all_close(ops.normalize(x, "imagenet")[0, 0],
                                (1 - np.array(ops.IMAGENET_MEAN)) / np.array(ops.IMAGENET_STD), rtol=1e-6)


def test_video_frame_sampling():
    chex.assert_trees_all_equal(ops.sample_frame_indices(100, 4, 16), np.round(np.linspace(0, 99, 16)).astype(int))
    chex.assert_trees_all_equal(ops.sample_frame_indices(8, 4, 16), np.arange(8))
    assert len(ops.sample_frame_indices(2, 4, 16)) == 4  # short clips repeat frames up to min_frames
    rng = np.random.default_rng(0)
    idx = ops.sample_frame_indices(100, 4, 16, rng=rng)
    assert len(idx) == 16 and np.all(np.diff(idx) > 0) and idx.max() < 100
    frames = np.arange(30)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    chex.assert_shape(ops.sample_video(frames, 4, 8), (8, 4, 4, 3))
