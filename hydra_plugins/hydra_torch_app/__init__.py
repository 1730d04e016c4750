"""Hydra plugins of this app (Hydra loads sweepers only from the `hydra_plugins` namespace package)."""
