"""The VITA-1.5 reference for the whole-model parity test: HF Qwen2ForCausalLM, HF InternVLVisionModel (saved under
the InternViT remote-code names the release uses), a torch mlp2x_gelu projector and the whale reference, composed as
the release's `VITAMetaForCausalLM.prepare_inputs_labels_for_multimodal` does (features x0.5 -> pixel shuffle ->
projector per tile; audio tokens truncated to their length; each placeholder replaced in order), and written out as a
release folder (config.json, sharded safetensors with model.* names, the audio folder with train.yaml)."""
from __future__ import annotations

import json
import os

import numpy as np
import torch
import transformers
import yaml
from safetensors.torch import save_file

import whale_reference
from test_vision_parity import randomize as randomize_vit, to_original_naming

AUDIO_DIR = "audio-encoder-Qwen2-7B-1107-weight-base-11wh-tunning"


def randomize(model, seed: int, scale: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)


class Reference:
    def __init__(self, text: dict, vision: dict, audio: dict, seed: int = 0):
        torch.manual_seed(seed)
        self.text_config = dict(model_type="qwen2", **text)
        self.lm = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**self.text_config)).float().eval()
        randomize(self.lm, seed)
        self.vision_kwargs = vision
        self.vit = transformers.InternVLVisionModel(transformers.InternVLVisionConfig(**vision)).float().eval()
        randomize_vit(self.vit, seed + 1)
        width, hidden = 4 * vision["hidden_size"], text["hidden_size"]
        self.projector = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.GELU(),
                                             torch.nn.Linear(hidden, hidden)).eval()
        randomize(self.projector, seed + 2, scale=0.2)
        self.audio_kwargs = audio
        self.audio = whale_reference.randomize(whale_reference.AudioEncoder(llm_dim=hidden, **audio), seed + 3)

    # ---------------------------------------------------------------------------------------------------
    def image_features(self, tiles: np.ndarray) -> torch.Tensor:
        """[M, H, W, C] -> [M, 256-equivalent, E] (InternViTVisionTower.forward + mm_projector)."""
        with torch.no_grad():
            out = self.vit(pixel_values=torch.tensor(tiles).permute(0, 3, 1, 2))
            feats = out.last_hidden_state[:, 1:]
            side = int(feats.shape[1] ** 0.5)
            grid = feats.reshape(feats.shape[0], side, side, -1)
            shuffled = transformers.InternVLModel.pixel_shuffle(None, grid * 0.5, scale_factor=0.5)
            return self.projector(shuffled.reshape(feats.shape[0], -1, shuffled.shape[-1]))

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray, image_index: int, audio_index: int,
               tiles: list[np.ndarray], clips: list[list[np.ndarray]]) -> np.ndarray:
        """tiles[b]: [n_b, H, W, C]; clips[b]: fbank arrays of sample b, in order -> float32 logits [B, T, V]."""
        rows = []
        with torch.no_grad():
            for b, ids in enumerate(input_ids):
                ids = torch.tensor(ids)
                is_image, is_audio = ids == image_index, ids == audio_index
                x = self.lm.model.embed_tokens(torch.where(is_image | is_audio, 0, ids)).clone()
                if is_image.any():
                    x[is_image] = self.image_features(tiles[b]).reshape(-1, x.shape[-1])
                feats = []
                for clip in clips[b]:
                    emb, mask = self.audio(torch.tensor(clip)[None], torch.tensor([len(clip)]))
                    feats.append(emb[0, :int(mask.sum())])
                if feats:
                    x[is_audio] = torch.cat(feats)
                rows.append(x)
            out = self.lm(inputs_embeds=torch.stack(rows), attention_mask=torch.tensor(attention_mask))
        return out.logits.float().numpy()

    # ---------------------------------------------------------------------------------------------------
    def save_release(self, directory: str, vision_config_in_json: bool = False, shards: int = 2) -> str:
        os.makedirs(directory, exist_ok=True)
        state = {k: v.detach().clone() for k, v in self.lm.state_dict().items()}
        vit_state, vit_config = to_original_naming(self.vit.state_dict(), self.vit.config.to_dict())
        state.update({"model.vision_tower.vision_tower." + k: v for k, v in vit_state.items()})
        for i in (0, 2):
            state[f"model.mm_projector.{i}.weight"] = self.projector[i].weight.detach().clone()
            state[f"model.mm_projector.{i}.bias"] = self.projector[i].bias.detach().clone()
        state.update({"model.audio_encoder." + k: v.detach().clone() for k, v in self.audio.state_dict().items()})
        names = sorted(state)
        weight_map = {}
        for s in range(shards):
            file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: state[n].contiguous() for n in names[s::shards]}
            save_file(part, os.path.join(directory, file), metadata={"format": "pt"})
            weight_map.update({n: file for n in part})
        with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
        config = dict(self.text_config, model_type="vita-Qwen2", architectures=["VITAQwen2ForCausalLM"],
                      mm_projector_type="mlp2x_gelu", mm_vision_tower="OpenGVLab/InternViT-300M-448px",
                      mm_audio_encoder=AUDIO_DIR, mm_hidden_size=4 * self.vision_kwargs["hidden_size"],
                      freeze_audio_encoder=True, freeze_audio_encoder_adapter=False, image_aspect_ratio="square")
        if vision_config_in_json:
            config["vision_config"] = vit_config
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(config, f)
        a = self.audio_kwargs
        os.makedirs(os.path.join(directory, AUDIO_DIR), exist_ok=True)
        train = {
            "input_dim": 80,
            "encoder_conf": {
                "overview_conf": {"encoder-input-dim": 80, "encoder-output-dim": a["dim"],
                                  "encoder-layer-config": "subsampling-transformer"},
                "para_conf": {
                    "subsampling": {"subsampling-rate": 4, "subsampling-input-dim": 80,
                                    "subsampling-output-dim": a["dim"], "subsampling-dropout-rate": 0.1},
                    "transformer": {"transformer-input-dim": a["dim"], "transformer-output-dim": a["dim"],
                                    "transformer-attention-dim": a["dim"], "transformer-attention-heads": a["heads"],
                                    "transformer-linear-units": a["ffn"], "transformer-num-blocks": a["layers"],
                                    "transformer-dropout-rate": 0.1, "transformer-attention-dropout-rate": 0.0,
                                    "transformer-positional-dropout-rate": 0.1, "transformer-input-layer": "linear",
                                    "transformer-pos-enc-class": "rel-enc", "transformer-normalize-before": True,
                                    "transformer-concat-after": False, "transformer-positionwise-layer-type": "linear",
                                    "transformer-chunk_size": a.get("chunk_size", -1),
                                    "transformer-left_chunks": a.get("left_chunks", -1),
                                    "transformer-dynamic-chunks": False}}},
            "model_conf": {"enc_out_dim": a["dim"], "llm_embed_dim": self.text_config["hidden_size"],
                           "kernel_size": 5, "adpter_type": "subsampling", "activation_func": "gelu",
                           "norm": "layer"},
            "dataset_conf": {"resample_conf": {"resample_rate": 16000},
                             "fbank_conf": {"num_mel_bins": 80, "frame_length": 25, "frame_shift": 10, "dither": 0.0}},
        }
        with open(os.path.join(directory, AUDIO_DIR, "train.yaml"), "w") as f:
            yaml.safe_dump(train, f)
        return directory
