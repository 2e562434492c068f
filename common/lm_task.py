"""The text-only language-model task: the LM core (`common.lm.DecoderLM`) trained on next-token prediction,
as a `common.trainer.Task` — the first client of the trainer and the template the families follow.

Data sources: 'bundled' (the generated corpus of `common.bundled_text`) or 'text_file' (any UTF-8 file);
both byte-level (ids 0..255), split into a train part and a held-out eval part.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from common import bundled_text
from common.lm import DecoderLM, LMConfig, matmul_flops_per_token
from common.task_utils import lm_loss_fn
from common.trainer import DataShard, Task, TrainerSettings


def lm_config_from(model_config) -> LMConfig:
    fields = dict(model_config)
    if "rope_scaling" in fields:
        fields["rope_scaling"] = tuple(tuple(item) for item in fields["rope_scaling"])
    return LMConfig(**fields)


def token_splits_from(data_config) -> dict[str, np.ndarray]:
    source = data_config.get("source", "bundled")
    if source == "bundled":
        return bundled_text.token_splits(int(data_config.get("num_sentences", 20000)),
                                         int(data_config.get("corpus_seed", 0)),
                                         float(data_config.get("eval_fraction", 0.05)))
    if source == "text_file":
        with open(data_config["path"], encoding="utf-8") as f:
            ids = bundled_text.encode(f.read())
        n_eval = max(int(len(ids) * float(data_config.get("eval_fraction", 0.05))), int(data_config["seq_len"]) + 1)
        return {"train": ids[:-n_eval], "eval": ids[-n_eval:]}
    raise ValueError(f"unknown data source {source!r}; use 'bundled' or 'text_file'")


def make_task(config, workdir: str | None = None) -> Task:
    """The LM task of `config` (`workdir` unused: the byte-level data needs no tokenizer file)."""
    del workdir
    lm_config = lm_config_from(config.model)
    model = DecoderLM(lm_config)
    seq_len = int(config.data.seq_len)
    if lm_config.vocab_size < bundled_text.BYTE_VOCAB_SIZE:
        raise ValueError(f"byte-level data needs vocab_size >= 256, got {lm_config.vocab_size}")
    splits = token_splits_from(config.data)
    loss_fn = lm_loss_fn(model, lm_config, lm_path="", fused=TrainerSettings.from_config(config).lm_loss == "fused")

    def init_params(rng):
        return model.init(rng, jnp.zeros((1, seq_len), jnp.int32))["params"]

    def make_train_data(shard: DataShard):
        return {"text": bundled_text.TokenWindowIterator(splits["train"], seq_len, int(config.batch_size),
                                                         shard.index, shard.count, seed=int(config.seed))}

    def make_eval_data(shard: DataShard):
        iterator = bundled_text.TokenWindowIterator(splits["eval"], seq_len, int(config.batch_size), shard.index,
                                                    shard.count, shuffle=False)
        return (next(iterator) for _ in range(int(config.get("eval_batches", 4))))

    def batch_spec():
        rows = jax.ShapeDtypeStruct((int(config.batch_size), seq_len), jnp.int32)
        return {"text": {"input_ids": rows, "targets": rows,
                         "loss_mask": jax.ShapeDtypeStruct(rows.shape, jnp.float32)}}

    return Task(init_params=init_params, loss_fn=loss_fn, make_train_data=make_train_data,
                flops_per_example=3 * matmul_flops_per_token(lm_config, seq_len) * seq_len,
                make_eval_data=make_eval_data, batch_spec=batch_spec)
