"""Tiny VITA stage 3.2, the NAR + AR speech decoders (LLM frozen; the release ships no trainer): a 4-layer AR / 2-layer
NAR decoder of width 64 reading the tiny LLM's 64-d embeddings (at unit std) as one piece per token (the release:
3584 as 4 x 896), predicting the stage-3.1 codec's 512 codes of the bundled espeak speech of the shapes answers
('yes', 'two', 'top left': the 31 phrases the miniature's model answers with; captions join with
data.datasets.sentences.answer_fraction < 1 and max_speech_seconds 5). On the answers the decoder reads its text
within 800 steps; on captions and answers it had not by 250. Width 64 instead of 32 and 1600 steps instead of 800
(2026-12-07): the decoder's true answers recognised 35% instead of 4% of the time (docs/reproductions/vita.md)."""
from configs.vita.tiny_base import trainer_config
from configs.vita.tiny_stage3_1 import codec


def get_config():
    config = trainer_config(total_steps=1600, batch_size=8, log_every=25)
    config.stage = "3.2"
    config.decoder = dict(idim=64, num_codes=codec()["n_codes"], hidden_size=64, intermediate_size=256,
                          num_layers=4, num_heads=4, max_position_embeddings=1024)
    config.tokenizer = dict(kind="shapes_bpe", vocab_size=1024)
    config.codec_from = "workdirs/vita_tiny_s3_1/codec"  # python -m vita_jax.codec_train --workdir ... --out ...
    config.text_from = "workdirs/vita_tiny_s2_2"  # the VITA workdir whose LLM embeddings the decoder reads
    # the tiny LLM's table is at init scale (std 0.02): read as unit-std (the release: none)
    config.text_norm = "unit_std"
    config.text_width = 64  # the LLM width when text_from is empty (a random table: plumbing tests)
    config.scheduled_sampling = 0.0  # > 0: train on some of the decoder's own predicted codes (against the drift)
    config.data = dict(max_text_tokens=24, max_speech_seconds=2.0, num_threads=0, max_skip_fraction=0.05,
                       datasets=dict(sentences=dict(source="shapes", size=3000, answer_fraction=1.0)))
    config.optimizer = dict(lr=2e-3, schedule="cosine", warmup_steps=20, end_lr_ratio=0.1, b1=0.9, b2=0.98,
                            weight_decay=0.0, clip_norm=1.0,
                            param_groups=((r"decoder/.*", dict()), (r".*", dict(frozen=True))))
    return config
