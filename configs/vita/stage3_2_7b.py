"""VITA-1.5 stage 3.2 at release scale: the NAR + AR speech decoders (the release's sizes as Freeze-Omni reports them:
AR 4 / NAR 2 blocks of width 896, 14 heads, FFN 4864, 1024 codes + 4 specials) reading the frozen Qwen2.5-7B
embedding table (3584-d: 4 pieces of 896 per token), trained on the release codec's codes (VITA-1.5's TiCodec: 24 kHz,
40 codes/s). The release ships no stage-3.2 trainer, data or settings: the batch (64 sentences of <= 128 text tokens
and <= 10 s of speech: the sentence pieces the streaming TTS speaks), AdamW at 1e-4 and bf16 compute are this
library's choices. Point codec_from at a codec folder in the release layout (`VITA-1.5/decoder/codec` re-saved, or
`python -m vita_jax.codec_train --out`) and text_from at a stage-2.2 workdir; with neither (ahead-of-time plans:
`python -m mmlm_jax.plan --config configs/vita/stage3_2_7b.py --topology v5p-8`) a random codec of the release's
fields and a random [text_vocab_size, text_width] table stand in.
"""
import ml_collections

from configs.trainer import trainer_config


def get_config() -> ml_collections.ConfigDict:
    config = trainer_config(total_steps=20000, batch_size=64, checkpoint_every=1000,
                            mesh=dict(data=1, fsdp=-1, tensor=1))
    config.stage = "3.2"
    config.decoder = dict(idim=896, num_codes=1024, hidden_size=896, intermediate_size=4864, num_layers=4,
                          num_heads=14, max_position_embeddings=2048, dtype="bfloat16", param_dtype="float32")
    config.tokenizer = dict(kind="dir", path="VITA-1.5")
    config.codec_from = ""  # a codec folder in the release layout
    config.codec = {}  # without codec_from: CodecConfig fields of the stand-in codec ({}: VITA-1.5's)
    config.text_from = ""  # a stage-2.2 workdir: its LLM embedding table and tokenizer
    config.text_norm = "none"  # the release reads the raw table
    config.text_width = 3584  # Qwen2.5-7B's hidden size, for the stand-in table
    config.text_vocab_size = 152064  # Qwen2.5-7B's embedding rows (the planner's stand-in tokenizer)
    config.scheduled_sampling = 0.0
    config.data = dict(max_text_tokens=128, max_speech_seconds=10.0, num_threads=8, max_skip_fraction=0.01,
                       datasets=dict(sentences=dict(source="tts_json", json="/path/to/tts.json", audio_dir="")))
    config.optimizer = dict(lr=1e-4, schedule="cosine", warmup_steps=500, end_lr_ratio=0.0, b1=0.9, b2=0.98,
                            weight_decay=0.0, clip_norm=1.0,
                            param_groups=((r"decoder/.*", dict()), (r".*", dict(frozen=True))))
    return config
