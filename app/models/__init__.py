"""Model families. Each is built from `conf/model/<name>.yaml` through its `_target_`;
`in_features` and `out_features` come from the data at build time, never from the config."""
from app.models.mlp import MLP, ResidualMLP, make_activation

__all__ = ["MLP", "ResidualMLP", "make_activation"]
