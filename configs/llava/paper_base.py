"""Shared fields of the paper-scale LLaVA-1.5-7B configs: Vicuna-7B v1.5 + CLIP ViT-L/14-336 (layer -2, CLS dropped)
+ mlp2x_gelu, image placeholder -200 (the original IMAGE_TOKEN_INDEX; `<image>` is added to the tokenizer only to
mark where the 576 placeholders go), bf16 compute with float32 master weights, FSDP over all devices, pad-to-square
images, max length 2048 (Liu et al. 2023b, Appendix Table 9 hyper-parameters)."""
import ml_collections

from configs.trainer import trainer_config


def base_config() -> ml_collections.ConfigDict:
    config = trainer_config(batch_size=128, checkpoint_every=500, keep_checkpoints=2,
                            mesh=dict(data=1, fsdp=-1, tensor=1))
    config.model = dict(preset="llava_v1_5_7b",
                        text=dict(dtype="bfloat16", param_dtype="float32", remat_policy="dots_no_batch",
                                  max_position_embeddings=4096),
                        vision=dict(dtype="bfloat16", param_dtype="float32"),
                        image_token_index=-200)
    # tokenizer.path: the Vicuna checkpoint dir (tokenizer.model); set on the command line.
    config.tokenizer = dict(kind="dir", path="")
    config.data = dict(template="vicuna_v1", text_only=False, pad_to_square=True, over_length="skip",
                       pack=False, num_threads=16,
                       max_skip_fraction=0.01, convert_image_modes=False, datasets={}, json="", image_dir="",
                       max_len=2048)
    config.init_from = ""
    config.init_exclude = ()
    config.init_checkpoint = dict(lm="", vision="")
    config.lora = dict(rank=0, alpha=0.0, targets=())
    config.eval_vqa = dict(num_questions=0, split="validation", max_new_tokens=8)
    return config

