"""Vision encoders shared by the three families: CLIP ViT (OpenFlamingo, LLaVA) and InternViT with InternVL's
pixel shuffle (VITA-1.5), on one pre-LN ViT core (`common.vision.vit`), and NFNet-F0 .. F6 (the Flamingo paper's
encoder, `common.vision.nfnet`). Checkpoint loading: `common.hf.vision`."""
from common.vision.clip import CLIPVisionConfig, CLIPVisionTransformer, clip_vit_l14, clip_vit_l14_336
from common.vision.intern_vit import InternViT, InternViTConfig, image_features, internvit_300m_448px, pixel_shuffle
from common.vision.nfnet import NFNet, NFNetConfig, NFNetOutput, nfnet_f
from common.vision.vit import VisionOutput


def build_vision_tower(config):
    """CLIPVisionConfig -> CLIP ViT (OpenFlamingo, LLaVA, IDEFICS); NFNetConfig -> NFNet (the Flamingo paper's)."""
    if isinstance(config, CLIPVisionConfig):
        return CLIPVisionTransformer(config)
    if isinstance(config, NFNetConfig):
        return NFNet(config)
    raise TypeError(f"unsupported vision config {type(config).__name__}: use CLIPVisionConfig or NFNetConfig, or pass "
                    "the encoder's features directly")


__all__ = ["CLIPVisionConfig", "CLIPVisionTransformer", "clip_vit_l14", "clip_vit_l14_336", "InternViT",
           "InternViTConfig", "image_features", "internvit_300m_448px", "pixel_shuffle", "NFNet", "NFNetConfig",
           "NFNetOutput", "nfnet_f", "VisionOutput", "build_vision_tower"]
