"""The Flamingo miniature's ablation and scratch configs (gating, block placement, names-heavier mix): loaded by name
by `flamingo_jax.reproduce --variants`, which looks here after configs/flamingo/."""
