"""Flamingo training configs (get_config(), ml_collections)."""
