"""The release's speech codec checkpoint (`vita_tts_ckpt/codec/`: model.json + final.pt, three torch state dicts
generator / quantizer / encoder, weight-normalised convolutions) <-> `vita_jax.codec.Codec` params: `load_original`
(weight norm folded, w = g v / |v|) and `save_original` (plain weights, the layout the release's `remove_weight_norm`
leaves). Both need torch to read / write final.pt."""
from __future__ import annotations

import json
import os

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vita_jax.codec import Codec, CodecConfig, init_params


def fold_weight_norm(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`x.weight_g` / `x.weight_v` pairs -> `x.weight` = g v / |v| (norm over every axis but 0, torch's default dim:
    out-channels of a Conv1d, in-channels of a ConvTranspose1d)."""
    out = {}
    for name, value in state.items():
        if name.endswith(".weight_v"):
            base = name[: -len(".weight_v")]
            v, g = np.asarray(value, np.float64), np.asarray(state[base + ".weight_g"], np.float64)
            norm = np.sqrt(np.sum(v**2, axis=tuple(range(1, v.ndim)), keepdims=True))
            out[base + ".weight"] = (g * v / norm).astype(np.float32)
        elif not name.endswith(".weight_g"):
            out[name] = np.asarray(value)
    return out


def _conv(w):  # torch Conv1d [out, in, k] -> flax [k, in, out]
    return np.ascontiguousarray(np.transpose(w, (2, 1, 0)))


def _deconv(w):  # torch ConvTranspose1d [in, out, k] -> ours [k, in, out]
    return np.ascontiguousarray(np.transpose(w, (2, 0, 1)))


def convert_state(generator: dict, quantizer: dict, encoder: dict | None, config: CodecConfig) -> dict:
    """The release's three state dicts (torch names, numpy values) -> our Codec params. Raises on unknown or missing
    tensors (`linear.*` of the release's encoder is built but never used: skipped)."""
    params: dict = {}

    def put(path: str, value):
        node = params
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        if leaf in node:
            raise ValueError(f"codec checkpoint: {path} written twice")
        node[leaf] = np.asarray(value, np.float32)

    def module_of(name: str, what: str) -> tuple[str, str]:
        parts = name.split(".")
        if parts[0] in ("conv_pre", "conv_post"):
            return parts[0], ".".join(parts[1:])
        if parts[0] == "ups":
            return f"ups_{parts[1]}", ".".join(parts[2:])
        if parts[0] == "resblocks":  # resblocks.{i}.convs{1,2}.{j}.{weight,bias}
            return f"resblocks_{parts[1]}/{parts[2]}_{parts[3]}", ".".join(parts[4:])
        if parts[0] == "normalize":
            return f"normalize_{parts[1]}", ".".join(parts[2:])
        raise ValueError(f"codec checkpoint: unexpected {what} tensor {name!r}")

    for name, w in fold_weight_norm(generator).items():
        mod, leaf = module_of(name, "generator")
        is_up = mod.startswith("ups_")
        put(f"generator/{mod}/{'kernel' if leaf == 'weight' else 'bias'}",
            (_deconv(w) if is_up else _conv(w)) if leaf == "weight" else w)
    if encoder is not None:
        for name, w in fold_weight_norm(encoder).items():
            if name.startswith("linear."):
                continue  # built by the release's Encoder, never called
            if name.startswith("GlobalTokenEncoder."):
                rest = name[len("GlobalTokenEncoder."):]
                conv_index = {"conv.0.weight": 0, "conv.2.weight": 1, "conv.4.weight": 2}
                if rest in conv_index:
                    put(f"encoder/global_encoder/conv_{conv_index[rest]}/kernel", _conv(w))
                elif rest in ("fn.0.weight", "fn.0.bias"):
                    put(f"encoder/global_encoder/fn_0/{'kernel' if rest.endswith('weight') else 'bias'}",
                        w.T if rest.endswith("weight") else w)
                elif rest.startswith("fn.2."):
                    leaf = rest[len("fn.2."):]
                    if leaf == "num_batches_tracked":
                        continue
                    mapped = {"weight": "scale", "bias": "bias", "running_mean": "running_mean",
                              "running_var": "running_var"}
                    if leaf not in mapped:
                        raise ValueError(f"codec checkpoint: unexpected encoder tensor {name!r}")
                    put(f"encoder/global_encoder/fn_2/{mapped[leaf]}", w)
                else:
                    raise ValueError(f"codec checkpoint: unexpected encoder tensor {name!r}")
                continue
            mod, leaf = module_of(name, "encoder")
            if mod.startswith("normalize_"):
                put(f"encoder/{mod}/{'scale' if leaf == 'weight' else 'bias'}", w)
            else:
                put(f"encoder/{mod}/{'kernel' if leaf == 'weight' else 'bias'}", _conv(w) if leaf == "weight" else w)
    for name, w in quantizer.items():
        if name == "quantizer_modules.0.embedding.weight":
            put("codebook", w)
        elif name.startswith("quantizer_modules_globaltokens."):
            continue
        else:
            raise ValueError(f"codec checkpoint: unexpected quantizer tensor {name!r} (only one code group and "
                             "residual layer are supported)")
    put("global_codebooks", np.stack([quantizer[f"quantizer_modules_globaltokens.{i}.embedding.weight"]
                                      for i in range(config.global_code_num)]))
    return params


def check_params(params, config: CodecConfig, with_encoder: bool = True) -> dict:
    """Shape-checks converted params against the config's (names and shapes must match exactly)."""
    expected = flax.traverse_util.flatten_dict(nn.unbox(jax.eval_shape(lambda: init_params(config, jax.random.key(0)))))
    got = flax.traverse_util.flatten_dict(params)
    if not with_encoder:
        expected = {k: v for k, v in expected.items() if k[0] != "encoder"}
    missing = sorted("/".join(k) for k in expected if k not in got)
    extra = sorted("/".join(k) for k in got if k not in expected)
    bad = sorted(f"{'/'.join(k)} {got[k].shape} != {expected[k].shape}" for k in expected
                 if k in got and tuple(got[k].shape) != tuple(expected[k].shape))
    if missing or extra or bad:
        raise ValueError(f"codec checkpoint does not match its model.json: missing {missing[:6]}, unexpected "
                         f"{extra[:6]}, mis-shaped {bad[:6]}")
    return flax.traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in got.items()})


def load_original(folder: str) -> tuple[Codec, dict]:
    """The release's `vita_tts_ckpt/codec/` (or the folder above it) -> (Codec, params). Needs torch to unpickle
    final.pt; without an encoder in it the codec can only decode (`encode` then fails on missing params)."""
    if os.path.isdir(os.path.join(folder, "codec")):
        folder = os.path.join(folder, "codec")
    conf_path, ckpt_path = os.path.join(folder, "model.json"), os.path.join(folder, "final.pt")
    for p in (conf_path, ckpt_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{folder!r} has no {os.path.basename(p)} (expected the release's "
                                    "vita_tts_ckpt/codec folder)")
    with open(conf_path) as f:
        config = CodecConfig.from_json(json.load(f))
    import torch

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    as_np = lambda sd: {k: v.float().numpy() for k, v in sd.items()}  # noqa: E731
    encoder = as_np(ckpt["encoder"]) if "encoder" in ckpt else None
    params = convert_state(as_np(ckpt["generator"]), as_np(ckpt["quantizer"]), encoder, config)
    return Codec(config), check_params(params, config, with_encoder=encoder is not None)


def save_original(folder: str, params, config: CodecConfig) -> None:
    """Writes our params in the release's layout (model.json + final.pt with plain weights: no weight_g / weight_v,
    which the release's `remove_weight_norm` would have produced anyway); needs torch."""
    import torch

    flat = {"/".join(k): np.asarray(v, np.float32) for k, v in
            flax.traverse_util.flatten_dict(nn.unbox(params)).items()}
    generator, encoder, quantizer = {}, {}, {}

    def torch_name(mod: str) -> str:
        if mod.startswith("resblocks_"):
            i, conv = mod.split("/")
            kind, j = conv.rsplit("_", 1)
            return f"resblocks.{i.split('_')[1]}.{kind}.{j}"
        if mod.startswith(("ups_", "normalize_")):
            a, b = mod.rsplit("_", 1)
            return f"{a}.{b}"
        return mod

    for path, v in flat.items():
        top, *rest = path.split("/")
        if top == "codebook":
            quantizer["quantizer_modules.0.embedding.weight"] = v
        elif top == "global_codebooks":
            for i in range(v.shape[0]):
                quantizer[f"quantizer_modules_globaltokens.{i}.embedding.weight"] = v[i]
        elif top in ("generator", "encoder"):
            target = generator if top == "generator" else encoder
            leaf = rest[-1]
            mod = "/".join(rest[:-1])
            if mod.startswith("global_encoder"):
                sub = rest[1]
                if sub.startswith("conv_"):
                    target[f"GlobalTokenEncoder.conv.{2 * int(sub[-1])}.weight"] = _conv_back(v)
                elif sub == "fn_0":
                    target[f"GlobalTokenEncoder.fn.0.{'weight' if leaf == 'kernel' else 'bias'}"] = (
                        v.T if leaf == "kernel" else v)
                else:
                    name = {"scale": "weight"}.get(leaf, leaf)
                    target[f"GlobalTokenEncoder.fn.2.{name}"] = v
                continue
            name = torch_name(mod)
            if leaf == "kernel":
                target[f"{name}.weight"] = _deconv_back(v) if mod.startswith("ups_") and top == "generator" \
                    else _conv_back(v)
            else:
                target[f"{name}.{'weight' if leaf == 'scale' else 'bias'}"] = v
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "model.json"), "w") as f:
        json.dump(config.to_json(), f, indent=1)
    as_t = lambda sd: {k: torch.from_numpy(np.array(v, np.float32)) for k, v in sd.items()}  # noqa: E731
    torch.save({"generator": as_t(generator), "quantizer": as_t(quantizer), "encoder": as_t(encoder)},
               os.path.join(folder, "final.pt"))


def _conv_back(k):  # [k, in, out] -> [out, in, k]
    return np.transpose(k, (2, 1, 0))


def _deconv_back(k):  # [k, in, out] -> [in, out, k]
    return np.transpose(k, (1, 2, 0))
