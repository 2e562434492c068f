"""Export to a standard Hugging Face checkpoint: a LoRA training workdir (adapters randomised, so the merge matters)
goes through `llava_jax.hf.export` to config.json + model.safetensors + tokenizer files that transformers'
LlavaForConditionalGeneration loads with our merged model's logits (f32, max abs diff <= 1e-4); `llava_jax.load_hf`
reads it back to bit-identical parameters and the chat CLI answers from it. HF LLaVA / LLaVA-NeXT checkpoints
(Llama, Qwen2 tied, Mistral text models) survive load -> save -> transformers bit for bit; what HF LLaVA cannot
express raises."""
import json
import os

import flax
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import llava_jax  # noqa: E402
from common import lora  # noqa: E402
from common.hf.checkpoint import CheckpointError  # noqa: E402
from llava_testlib import clip_pixels, hf_llava, jit_apply, prompts, random_params  # noqa: E402
from tiny_llava_testlib import load_config, micro  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def lora_workdir(tmp_path_factory):
    """A workdir of the micro LoRA stage-2 config (config.json, tokenizer.json, checkpoints/1/state) with random
    base weights and random adapters; -> (workdir, task, merged params, base params)."""
    from common.checkpoints import Checkpointer
    from common.tokenizers import save_tokenizer
    from llava_jax.task import make_task

    config = micro(load_config("tiny_stage2_lora"))
    config.init_from = ""
    task = make_task(config)
    module = task.model
    _, base = random_params(module, llava_jax.example_inputs(module.config), seed=1)
    rng = np.random.RandomState(2)
    adapters = jax.tree.map(lambda x: np.asarray(0.2 * rng.randn(*x.shape), np.float32),  # shapes only: no compile
                            jax.eval_shape(lambda: lora.init(base, task.lora_config, 0)))
    params = jax.tree.map(np.asarray, {**base, "lora": adapters})
    workdir = str(tmp_path_factory.mktemp("lora_workdir"))
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    save_tokenizer(task.tokenizer, workdir)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=1, async_save=False)
    assert ckpt.save(1, {"params": params}, [])
    ckpt.close()
    return workdir, task, lora.merge_in_tree(params, task.lora_config), base


@pytest.mark.slow
def test_lora_workdir_exports_an_hf_checkpoint(lora_workdir, tmp_path, real_images, capsys):
    from common.data.image_ops import encode_png
    from llava_jax import chat
    from llava_jax.hf import export, load_model

    workdir, task, merged, base = lora_workdir
    out = export(workdir, str(tmp_path / "hf"))
    files = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    hf_config = json.load(open(os.path.join(out, "config.json")))
    assert hf_config["model_type"] == "llava" and hf_config["text_config"]["model_type"] == "llama"
    assert hf_config["architectures"] == ["LlavaForConditionalGeneration"]
    assert hf_config["conversation_template"] == "vicuna_v1"  # the workdir's, read back by load_model

    # (a) transformers loads it; its logits equal our merged model's, and the adapters matter
    module, cfg = task.model, task.model.config
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
    tokens = cfg.tokens_per_crop
    ids, mask = prompts([[tokens, tokens], [tokens]], tokens, np.random.RandomState(3), vocab=cfg.text.vocab_size,
                        image_token=cfg.image_token_index)
    pixels = clip_pixels([real_images[k] for k in ("astronaut", "coffee", "chelsea")], cfg.vision.image_size)
    ours_pixels = np.zeros((2, 2) + pixels.shape[1:], np.float32)
    ours_pixels[0], ours_pixels[1, 0] = pixels[:2], pixels[2]
    image_mask = np.array([[True, True], [True, False]])
    ours = jit_apply(module, merged, ids, ours_pixels, mask, image_mask)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                 pixel_values=torch.tensor(np.moveaxis(pixels, -1, -3))).logits.float().numpy()
    valid = mask.astype(bool)
    diff = np.abs(ours - ref)[valid].max()
    with capsys.disabled():
        print(f"\nLoRA export: max |logits(ours, merged) - logits(transformers, export)| = {diff:.2e}")
    assert diff <= TOL
    assert np.abs(jit_apply(module, base, ids, ours_pixels, mask, image_mask) - ours)[valid].max() > 1e-2

    # (b) load_hf reads back the identical merged parameters and config; load_model keeps template and tokenizer
    module2, params2 = llava_jax.load_hf(out)
    assert module2.config == cfg.replace(projector_act="gelu")  # mlp2x_gelu, the activation spelled out
    flat, flat2 = flax.traverse_util.flatten_dict(merged), flax.traverse_util.flatten_dict(params2)
    assert flat.keys() == flat2.keys() and all(np.array_equal(flat[k], np.asarray(flat2[k])) for k in flat)
    _, _, tok, template = load_model(out)
    assert template == "vicuna_v1" and tok.vocab_size == task.tokenizer.vocab_size
    assert tok.token_to_id("<image>") == cfg.image_token_index and tok.eos_id == task.tokenizer.eos_id

    # (c) the chat CLI answers from the export dir like generate_batch on the merged params
    image = real_images["chelsea"]
    path = str(tmp_path / "cat.png")
    with open(path, "wb") as f:
        f.write(encode_png(image))
    # module2 (= the module the CLI builds from the export) shares the CLI's compiled generation function
    expected = llava_jax.generate_batch(module2, merged, task.tokenizer, [([image], "What is it?")], max_new_tokens=4)
    capsys.readouterr()
    assert chat.main(["--checkpoint", out, "--image", path, "--prompt", "What is it?", "--max_new_tokens", "4"]) == 0
    assert capsys.readouterr().out.strip() == expected[0]


@pytest.mark.parametrize("text,next_pinpoints,kwargs", [
    ("qwen2", None, dict(vision_feature_layer=-1, vision_feature_select_strategy="full",
                         projector_hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True)),
    ("mistral", [[42, 84], [84, 42], [84, 84]], dict(vision_feature_layer=[-3, -1], projector_hidden_act="relu",
                                                     multimodal_projector_bias=False)),
], ids=["llava_qwen2_tied_full", "llava_next_mistral_layers"])
def test_hf_checkpoint_survives_load_and_save(text, next_pinpoints, kwargs, save_hf, tmp_path):
    """HF -> load_hf -> save_hf -> transformers: every tensor bit-identical, same config; NeXT included."""
    model = hf_llava(text, 42, next_pinpoints=next_pinpoints, **kwargs)
    module, params = llava_jax.load_hf(save_hf(model))
    out = llava_jax.save_hf(str(tmp_path / "out"), module, params)
    hf_config = json.load(open(os.path.join(out, "config.json")))
    assert hf_config["model_type"] == ("llava_next" if next_pinpoints else "llava")
    assert hf_config["text_config"]["model_type"] == text
    again = type(model).from_pretrained(out).eval()
    ref, got = model.state_dict(), again.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    for key in ("vision_feature_layer", "vision_feature_select_strategy", "projector_hidden_act", "image_token_index",
                "multimodal_projector_bias", "tie_word_embeddings", "image_grid_pinpoints"):
        assert getattr(again.config, key, None) == getattr(model.config, key, None), key
    skip = ("architectures", "dtype", "tie_word_embeddings")  # tying: the top-level field, compared above
    text_ref, text_got = model.config.text_config.to_dict(), again.config.text_config.to_dict()
    assert {k: v for k, v in text_got.items() if k not in skip} == {k: v for k, v in text_ref.items() if k not in skip}
    module2, params2 = llava_jax.load_hf(out)
    assert module2.config == module.config
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)))


def test_what_hf_llava_cannot_express_raises(save_hf):
    from llava_jax.hf import llava_config_to_hf

    module, _ = llava_jax.load_hf(save_hf(hf_llava("llama", 42)))
    cfg = module.config
    with pytest.raises(CheckpointError, match="projector"):  # LLaVA-1's single Linear
        llava_config_to_hf(cfg.replace(projector_type="linear"))
    with pytest.raises(CheckpointError, match="image_token_index"):  # the original release's -200
        llava_config_to_hf(cfg.replace(image_token_index=-200))
    with pytest.raises(CheckpointError, match="biases"):  # Qwen2 has q/k/v biases only
        llava_config_to_hf(cfg.replace(text=cfg.text.replace(qkv_bias=True, out_bias=True)), "qwen2")
