"""Where a pack's time goes: cProfile of composing and building row 1's trials (benchmarks/packed.py)
and of one `PackedTrainer` fit of all of them; extra arguments are overrides for every trial.

    python benchmarks/profile_pack.py 64 15                                        # trials, epochs
    python benchmarks/profile_pack.py 64 15 callbacks.checkpoint.pack_interval_s=0
"""
from __future__ import annotations

import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT  # noqa: F401 (puts the repository on sys.path)

import torch  # noqa: E402

import packed  # noqa: E402
from app.config import register_configs  # noqa: E402
from app.search.configs import TrialConfigs  # noqa: E402
from app.train.packed import PackedTrainer  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402


def main() -> None:
    trials, epochs, extra = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(1) if device == "cpu" else None
    register_configs()
    overrides = [o + extra for o in packed.trial_overrides(trials, epochs, 10000, device)]
    with initialize_config_dir(config_dir=str(ROOT / "conf")), tempfile.TemporaryDirectory() as root:
        full = lambda o: compose("config", overrides=o, return_hydra_config=True)  # noqa: E731
        packed.CONFIGS = TrialConfigs(full, groups=list(full([]).hydra.runtime.choices.keys()))
        building, fitting = cProfile.Profile(), cProfile.Profile()
        started = time.perf_counter()
        building.enable()
        runs = packed.build(overrides, Path(root))
        building.disable()
        print(f"build s {time.perf_counter() - started:.3f} (profiled)")
        trainer = PackedTrainer(runs)
        started = time.perf_counter()
        fitting.enable()
        trainer.fit()
        if device == "cuda":
            torch.cuda.synchronize()
        fitting.disable()
        print(f"fit s {time.perf_counter() - started:.3f} (profiled), overrides {extra}")
        pstats.Stats(building).sort_stats("cumulative").print_stats(25)
        stats = pstats.Stats(fitting)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()
