"""Small Hydra apps for the scenarios of hydra-optuna-sweeper's own examples and tests, swept by
`app_optuna` (tests/test_official_examples.py): not this app's runs, plain task functions.

    python tests/official_examples/objectives.py --multirun --config-name=sphere
    python tests/official_examples/objectives.py --multirun --config-name=binh_korn

`problem` picks the function: `sphere` (x^2 + y^2, plus w^2 + z^2 when the config has them as
numbers; one objective) or `binh_korn` (the Binh and Korn problem: two objectives, both minimised).
`configure` is a custom search space (`hydra.sweeper.custom_search_space`): z within
`max_z_difference_from_x` of the sampled x, and a new key w.
"""
from __future__ import annotations

import math


import hydra
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="sphere")
def objective(cfg: DictConfig) -> float | tuple[float, float]:
    if cfg.get("error", False):
        raise RuntimeError("cfg.error is True")
    if cfg.get("reject", False):  # what the study cannot take: nan, or one value for two objectives
        return math.nan if cfg.problem == "sphere" else [1.0]
    x, y = float(cfg.x), float(cfg.y)
    if cfg.problem == "binh_korn":
        return 4 * x ** 2 + 4 * y ** 2, (x - 5) ** 2 + (y - 5) ** 2
    extra = sum(float(cfg[key]) ** 2 for key in ("w", "z") if isinstance(cfg.get(key), (int, float)))
    return x ** 2 + y ** 2 + extra


def configure(cfg: DictConfig, trial) -> None:
    """Conditional parameters: z near the x this trial drew, and w, a key the config lacks (`+w`)."""
    x = trial.params["x"]
    trial.suggest_float("z", x - cfg.max_z_difference_from_x, x + cfg.max_z_difference_from_x)
    trial.suggest_float("+w", 0.0, 1.0)


if __name__ == "__main__":
    objective()
