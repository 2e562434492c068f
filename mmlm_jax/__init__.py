"""mmlm-jax's top level, above the three families: the main job (`python -m mmlm_jax.demo`) that trains and measures
the tiny Flamingo, LLaVA and VITA on the bundled data. The library itself is `common` + the family packages."""
