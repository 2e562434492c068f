"""Configs of the text-only LM core (`python -m common.train --config configs/lm/<name>.py`)."""
