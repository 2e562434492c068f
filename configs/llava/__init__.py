"""LLaVA training configs (`python -m llava_jax.train --config configs/llava/<name>.py --workdir DIR`)."""
