"""Tiny VITA stage 3.1, the speech codec (the release ships no trainer): a 128-wide HiFi-GAN V1 generator and its
mirrored encoder at 24 kHz / 40 Hz tokens, one codebook of 512, 8 style codebooks; HiFi-GAN's discriminators at 1/16
width (the multi-scale one at its first scale, dense convs: fast on a CPU); trained on the bundled espeak speech (the
shapes ASR utterances, resampled 16 -> 24 kHz)."""
from configs.vita.tiny_base import trainer_config
from vita_jax.presets import TINY_CODEC_FIELDS


def codec() -> dict:
    return dict(TINY_CODEC_FIELDS)


def get_config():
    config = trainer_config(total_steps=300, batch_size=8, log_every=25)
    config.stage = "3.1"
    config.codec = codec()
    config.discriminator = dict(periods=(2, 3, 5, 7, 11), channel_scale=1 / 16, num_scales=1, grouped=False)
    config.loss = dict(mel=45.0, stft=1.0, vq=1.0, adversarial=1.0, feature=2.0,
                       stft_resolutions=((1024, 120, 600), (2048, 240, 1200), (512, 50, 240)))
    config.data = dict(segment_seconds=0.5, num_threads=0, max_skip_fraction=0.05,
                       datasets=dict(speech=dict(source="shapes", kind="asr", size=2000)))
    config.init_from = ""
    config.codebook_init_clips = 64  # codebooks seeded from the encoder's outputs on these clips (0: random init)
    # dead-code restarts: a code whose EMA share of frames falls below threshold / n_codes moves onto a batch latent
    config.code_restart = dict(decay=0.9, threshold=0.1)
    # HiFi-GAN's AdamW (lr 2e-4, betas 0.8 / 0.99); the style norm's running statistics are measured, not trained
    config.optimizer = dict(lr=2e-3, schedule="cosine", warmup_steps=20, end_lr_ratio=0.1, b1=0.8, b2=0.99,
                            weight_decay=0.0, clip_norm=10.0,
                            param_groups=((r"codec/encoder/global_encoder/fn_2/running_.*", dict(frozen=True)),
                                          (r"code_usage", dict(frozen=True)),
                                          (r".*", dict())))
    return config
