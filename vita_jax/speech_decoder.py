"""VITA-1.5's speech decoders (Fu et al. 2025, Sec. 3.1 and Fig. 2 "NAR + AR speech decoder"; the release's
`vita_tts/decoder/decoder.py::LLM2TTSCodecAR`): text embeddings of the LLM's answer -> codec tokens.

  text embeddings [B, L, idim] (each LLM token's embedding split into hidden/idim pieces)
    --NAR: N/2 Llama layers, bidirectional over the valid length--> [B, L, E]
    --[bos] + that = the prefix [B, L + 1, E]; then [sos, y_1, ...] autoregressively through N Llama layers (the
      prefix attends bidirectionally within itself, tokens to the whole prefix and causally among themselves),
      RMSNorm, Linear -> logits over 1024 codes + bos 1024 / sos 1025 / eos 1026 / pad 1027.

The Llama layers are common.lm's (`DecoderStack`); decoding keeps a `KVCache` (prefix once, then one token a step) and
samples top-k from the softmax (the release: k=2, temperature 1), stopping at eos. Positions continue after the
prefix as at the release's inference; in a padded training batch each row's tokens start right after its own prefix
(the release counts from the padded prefix length, which differs only for padded rows). Stage 3.2 trains it
(`vita_jax.speech_train`); `vita_jax.hf.load_speech_decoder` reads the release's
`vita_tts_ckpt/decoder/{model.json, final.pt}`.
"""
from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common.generate import filter_logits
from common.layers import dtype_of, make_norm
from common.lm import DecoderStack, KVCache, LMConfig


@dataclasses.dataclass(frozen=True)
class SpeechDecoderConfig:
    """The release's decoder/model.json arguments (names shortened); sizes of VITA-1.5's decoder are read from its
    checkpoint (`vita_jax.hf.load_speech_decoder`), the defaults are Freeze-Omni's reported 4 blocks of 896."""

    idim: int = 896  # width of one text-embedding piece = the transformer width
    num_codes: int = 1024  # odim: the codec's codebook
    hidden_size: int = 896  # transformer_attention_dim
    intermediate_size: int = 4864  # transformer_linear_units
    num_layers: int = 4  # transformer_num_blocks: the AR decoder; the NAR one has num_layers // 2
    num_heads: int = 14  # transformer_attention_heads
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    dropout_rate: float = 0.0  # transformer_dropout_rate (attention dropout in the release; not applied here)
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"

    def __post_init__(self):
        if self.idim != self.hidden_size:
            raise ValueError(f"idim {self.idim} must equal hidden_size {self.hidden_size} (the release concatenates "
                             "the bos embedding with the NAR output)")
        if self.num_layers < 2:
            raise ValueError(f"num_layers must be >= 2 (the NAR decoder has num_layers // 2), got {self.num_layers}")

    @property
    def vocab_size(self) -> int:
        return self.num_codes + 4

    @property
    def bos(self) -> int:
        return self.num_codes

    @property
    def sos(self) -> int:
        return self.num_codes + 1

    @property
    def eos(self) -> int:
        return self.num_codes + 2

    @property
    def pad(self) -> int:
        return self.num_codes + 3

    def lm_config(self, num_layers: int) -> LMConfig:
        return LMConfig(vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_layers=num_layers,
                        num_heads=self.num_heads, intermediate_size=self.intermediate_size,
                        max_position_embeddings=self.max_position_embeddings, rope_theta=self.rope_theta,
                        norm_eps=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                        scan_layers=self.scan_layers, remat_policy=self.remat_policy)

    def replace(self, **changes) -> SpeechDecoderConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_model_json(cls, conf, **overrides) -> SpeechDecoderConfig:
        """The release's model.json ([idim, odim, {args}] or just {args})."""
        args = conf[2] if isinstance(conf, list) else conf
        if int(args.get("kv_cache_prefix_finetune", 0)):
            raise ValueError("kv_cache_prefix_finetune decoders (the Freeze-Omni prefix path, unused by VITA-1.5) "
                             "are not supported")
        hidden = int(args["transformer_attention_dim"])
        if int(args.get("encoder_output_dim", hidden)) != hidden:
            raise ValueError(f"encoder_output_dim {args['encoder_output_dim']} != transformer_attention_dim {hidden}")
        return cls(idim=int(args.get("idim", hidden)), num_codes=int(args.get("odim", 1024)), hidden_size=hidden,
                   intermediate_size=int(args["transformer_linear_units"]),
                   num_layers=int(args["transformer_num_blocks"]), num_heads=int(args["transformer_attention_heads"]),
                   dropout_rate=float(args.get("transformer_dropout_rate", 0.0)), **overrides)

    def to_model_json(self) -> list:
        args = dict(idim=self.idim, odim=self.num_codes, transformer_attention_dim=self.hidden_size,
                    transformer_linear_units=self.intermediate_size, transformer_num_blocks=self.num_layers,
                    transformer_attention_heads=self.num_heads, transformer_dropout_rate=self.dropout_rate,
                    encoder_output_dim=self.hidden_size, encoder_pre_norm_type="ln", encoder_drop_rate=0.0,
                    encoder_criterion="ce", encoder_upsample_rate=1, kv_cache_prefix_finetune=0)
        return [self.idim, self.num_codes, args]


class _Stack(nn.Module):
    """A common.lm decoder stack under `decoder` (the parameter layout common.hf.lm's rules load into)."""

    config: LMConfig

    def setup(self):
        self.decoder = DecoderStack(self.config)

    def __call__(self, x, cache_kv, positions, mask, cache_index):
        return self.decoder(x, cache_kv, positions, mask, None, cache_index)


def text_pieces(embeddings: jax.Array, idim: int) -> jax.Array:
    """LLM token embeddings [B, n, D] -> decoder input [B, n * D / idim, idim] (the release: reshape(-1, 896), each
    3584-d Qwen2 embedding becoming 4 consecutive pieces)."""
    b, n, d = embeddings.shape
    if d % idim:
        raise ValueError(f"LLM embedding width {d} is not a multiple of the speech decoder's idim {idim}")
    return embeddings.reshape(b, n * (d // idim), idim)


class SpeechDecoder(nn.Module):
    config: SpeechDecoderConfig

    def setup(self):
        cfg = self.config
        dtype, param_dtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        self.embedding = nn.Embed(cfg.vocab_size, cfg.idim, dtype=dtype, param_dtype=param_dtype,
                                  embedding_init=nn.initializers.normal(1.0))
        self.nar = _Stack(cfg.lm_config(cfg.num_layers // 2))
        self.ar = _Stack(cfg.lm_config(cfg.num_layers))
        self.norm = make_norm("rms", cfg.norm_eps, False, dtype, param_dtype, name="norm")
        self.out = nn.Dense(cfg.vocab_size, dtype=dtype, param_dtype=param_dtype)

    def prefix(self, text, text_lengths):
        """text [B, L, idim], lengths [B] -> prefix [B, L + 1, E] = [bos, NAR(text)] and its lengths [B] (+1)."""
        b, length, _ = text.shape
        valid = jnp.arange(length)[None, :] < text_lengths[:, None]  # [B, L]
        mask = (valid[:, :, None] & valid[:, None, :])[:, None]  # [B, 1, L, L] bidirectional over the valid length
        positions = jnp.broadcast_to(jnp.arange(length)[None], (b, length))
        h, _ = self.nar(text.astype(dtype_of(self.config.dtype)), None, positions, mask, jnp.zeros((), jnp.int32))
        bos = self.embedding(jnp.full((b, 1), self.config.bos))
        return jnp.concatenate([bos, h], axis=1), text_lengths + 1

    def logits(self, hidden):
        return self.out(self.norm(hidden)).astype(jnp.float32)

    def __call__(self, text, text_lengths, codes, code_lengths):
        """Teacher forcing (stage 3.2): text [B, L, idim], text_lengths [B], codes [B, Ty] (values past code_lengths
        ignored) -> logits [B, Ty + 1, V] predicting codes[:, 0], ..., codes[:, len - 1], eos."""
        cfg = self.config
        prefix, prefix_lengths = self.prefix(text, text_lengths)  # [B, P = L + 1, E]
        b, p = prefix.shape[:2]
        ty = codes.shape[1]
        tokens = jnp.concatenate([jnp.full((b, 1), cfg.sos, codes.dtype), codes], axis=1)  # [B, Ty + 1]
        x = jnp.concatenate([prefix, self.embedding(tokens)], axis=1)  # [B, P + Ty + 1, E]
        slots = jnp.arange(p + ty + 1)
        is_prefix = slots < p
        token_index = slots - p  # position among the tokens (negative in the prefix)
        key_ok = jnp.where(is_prefix[None], slots[None] < prefix_lengths[:, None],
                           token_index[None] <= code_lengths[:, None])  # [B, S]: valid prefix / token slots
        query_prefix = is_prefix[:, None]  # [T, 1]
        causal_or_prefix = is_prefix[None, :] | (token_index[None, :] <= token_index[:, None])  # keys a query sees
        allowed = jnp.where(query_prefix, is_prefix[None, :], causal_or_prefix)  # [T, S]
        mask = (allowed[None] & key_ok[:, None, :])[:, None]  # [B, 1, T, S]
        positions = jnp.where(is_prefix[None], slots[None], prefix_lengths[:, None] + token_index[None])
        h, _ = self.ar(x, None, positions, mask, jnp.zeros((), jnp.int32))
        return self.logits(h[:, p:])

    # ------------------------------------------------------------------------------------------ cached decoding
    def start(self, text, text_lengths, cache: KVCache):
        """Runs the prefix into an empty cache: -> (cache, next position [B])."""
        prefix, prefix_lengths = self.prefix(text, text_lengths)
        b, p = prefix.shape[:2]
        valid = jnp.arange(p)[None] < prefix_lengths[:, None]  # [B, P]
        key_valid = jax.lax.dynamic_update_slice(cache.valid, valid, (0, 0))  # [B, S_max]
        mask = jnp.broadcast_to(key_valid[:, None, None, :], (b, 1, p, cache.max_length))
        positions = jnp.broadcast_to(jnp.arange(p)[None], (b, p))
        _, kv = self.ar(prefix, (cache.key, cache.value), positions, mask, jnp.zeros((), jnp.int32))
        cache = KVCache(key=kv[0], value=kv[1], valid=key_valid, index=jnp.asarray(p, jnp.int32))
        return cache, prefix_lengths

    def step(self, tokens, positions, cache: KVCache):
        """tokens [B] at positions [B] -> (logits [B, V], cache)."""
        b = tokens.shape[0]
        key_valid = jax.lax.dynamic_update_slice(cache.valid, jnp.ones((b, 1), bool), (0, cache.index))
        mask = (key_valid & (jnp.arange(cache.max_length) <= cache.index)[None])[:, None, None, :]
        h, kv = self.ar(self.embedding(tokens[:, None]), (cache.key, cache.value), positions[:, None], mask,
                        cache.index)
        cache = KVCache(key=kv[0], value=kv[1], valid=key_valid, index=cache.index + 1)
        return self.logits(h)[:, 0], cache


def sample_code(logits: jax.Array, rng: jax.Array, config: SpeechDecoderConfig, top_k: int = 2,
                temperature: float = 1.0) -> jax.Array:
    """logits [B, V] -> next token [B]: top-k sampling from the softmax (top_k=1: greedy). bos / sos / pad are never
    sampled (the release could draw them and then fail in the codec); eos ends the utterance."""
    banned = jnp.zeros(logits.shape[-1], bool).at[jnp.asarray([config.bos, config.sos, config.pad])].set(True)
    logits = jnp.where(banned, -jnp.inf, logits)
    if top_k == 1:
        return jnp.argmax(logits, -1).astype(jnp.int32)
    return jax.random.categorical(rng, filter_logits(logits, temperature, top_k, 1.0)).astype(jnp.int32)


class CodeGenerator:
    """Streams codec tokens for one utterance at a time, one jitted step each (prefix once, then the KV cache)."""

    def __init__(self, model: SpeechDecoder, params, max_tokens: int = 1000, max_text_pieces: int = 512):
        self.model, self.params, self.config = model, params, model.config
        self.max_tokens, self.max_text = max_tokens, max_text_pieces
        self._start = jax.jit(lambda p, t, n, c: model.apply({"params": p}, t, n, c, method="start"))
        self._step = jax.jit(lambda p, tok, pos, c: model.apply({"params": p}, tok, pos, c, method="step"))
        self._sample = jax.jit(sample_code, static_argnames=("config", "top_k", "temperature"))

    def stream(self, text: np.ndarray, rng: jax.Array | None = None, top_k: int = 2, temperature: float = 1.0,
               should_stop=None) -> Iterator[int]:
        """text [L, idim] (pieces) -> yields codec tokens until eos, max_tokens, or `should_stop()` is true."""
        text = np.asarray(text, np.float32)
        if text.ndim != 2 or text.shape[1] != self.config.idim:
            raise ValueError(f"text pieces must be [L, {self.config.idim}], got {text.shape}")
        n = text.shape[0]
        if n == 0:
            raise ValueError("no text to speak")
        if n > self.max_text:
            raise ValueError(f"{n} text pieces exceed max_text_pieces={self.max_text}; split the answer into "
                             "sentences (vita_jax.tts.split_for_speech)")
        padded = np.zeros((1, self.max_text, self.config.idim), np.float32)  # one compiled shape for every length
        padded[0, :n] = text
        total = self.max_text + 1 + self.max_tokens + 1
        cache = KVCache.create(self.config.lm_config(self.config.num_layers), 1, total)
        cache, position = self._start(self.params, jnp.asarray(padded), jnp.asarray([n], jnp.int32), cache)
        rng = jax.random.key(0) if rng is None else rng
        token = jnp.full((1,), self.config.sos, jnp.int32)
        for i in range(self.max_tokens):
            if should_stop is not None and should_stop():
                return
            logits, cache = self._step(self.params, token, position, cache)
            token = self._sample(logits, jax.random.fold_in(rng, i), config=self.config, top_k=top_k,
                                 temperature=temperature)
            position = position + 1
            value = int(token[0])
            if value == self.config.eos:
                return
            yield value


def init_params(config: SpeechDecoderConfig, rng: jax.Array) -> Any:
    model = SpeechDecoder(config)
    text = jnp.zeros((1, 3, config.idim), jnp.float32)
    return model.init(rng, text, jnp.asarray([3]), jnp.zeros((1, 2), jnp.int32), jnp.asarray([2]))["params"]
