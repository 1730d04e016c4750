"""Trial configs composed once per structure: the trials of a search mostly differ in plain values.

Hydra composes a job's config from scratch (defaults list, every YAML file, schema merges, the
overrides) on each call, which takes tens of milliseconds; a sweep composes one per trial, and a
pack of 64 trials composes 64 of them before it trains. A sweep's jobs are composed through one
`TrialConfigs`: the packs' members (app/search/packs.py), the jobs of the sweep's worker processes
(app/search/pool.py) and, through `ComposedOnceLoader`, the jobs Hydra's basic launcher composes
in the sweep process (about 200 ms a trial less on the 2-core CPU). `TrialConfigs` composes a trial in full
the first time its *structure* is seen, and otherwise copies that composition and applies the
trial's plain values the way Hydra applies a command-line override (`OmegaConf.update(cfg, key,
value, merge=True)` in struct mode), then records the trial's own overrides in
`hydra.overrides.task` (from which `hydra.job.override_dirname` is derived).

The structure of a list of overrides is every override as written, except the plain value
overrides (`key=value` of a key that is a value in the composed config, with a scalar value),
which count by key only. So `optimizer.lr=1e-3` and `optimizer.lr=3e-2` share a structure;
`optimizer=sgd` (a config group), `+key=...`, `~key`, `key={...}`, hydra's own keys and any key
the composition does not hold as a value are structural: a trial that changes them is composed in
full. The result is the config Hydra composes (`tests/test_trial_configs.py` checks it across
the presets' searches).
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import Container, DictConfig, OmegaConf, open_dict

_ABSENT = object()


class TrialConfigs:
    """`configs(overrides)`: the composed config of a trial with `overrides`, as
    `compose(overrides)` returns it (a new object each call: callers may change it).
    `groups`: the config group names (`hydra.runtime.choices` of the sweep's config), whose
    overrides are structural."""

    def __init__(self, compose: Callable[[list[str]], DictConfig], groups: Sequence[str] = ()) -> None:
        self._compose = compose
        self._groups = set(groups)
        self._structural: set[str] = set()  # keys found not to be plain values
        self._parser = OverridesParser.create()
        self._composed: dict[tuple, tuple[DictConfig, list[Override]]] = {}
        self.full = 0  # compositions in full (for tests and benchmarks)

    def __call__(self, overrides: Sequence[str]) -> DictConfig:
        overrides = [str(o) for o in overrides]
        parsed = self._parser.parse_overrides(overrides)
        entry = self._composed.get(self._key(parsed))
        if entry is None:
            cfg = self._compose(list(overrides))
            self.full += 1
            found = [o for o in parsed if self._is_value(o) and not _is_leaf(cfg, o.key_or_group)]
            self._structural.update(o.key_or_group for o in found)
            self._composed[self._key(parsed)] = (copy.deepcopy(cfg), parsed)
            return cfg
        base, base_parsed = entry
        cfg = copy.deepcopy(base)
        try:
            for override in parsed:
                if self._is_value(override):
                    OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True,
                                     force_add=override.is_force_add())
        except Exception:  # noqa: BLE001 - a value the config refuses: Hydra's own composition says why
            self.full += 1
            return self._compose(list(overrides))
        # As Hydra records them: whatever came before the job's own overrides (the sweep's), then
        # the job's, each in its list (hydra's own keys or the task's).
        with open_dict(cfg.hydra):
            for name, of_hydra in (("hydra", True), ("task", False)):
                recorded = list(cfg.hydra.overrides[name])
                ours = sum(o.is_hydra_override() == of_hydra for o in base_parsed)
                cfg.hydra.overrides[name] = recorded[:len(recorded) - ours] + [
                    o.input_line for o in parsed if o.is_hydra_override() == of_hydra]
        return cfg

    def _is_value(self, override: Override) -> bool:
        """A `key=value` (or `++key=value`) override of a scalar: its structure is its key alone.
        Of hydra's own keys only a job's environment (`hydra.job.env_set.*`)."""
        key = override.key_or_group
        if override.is_hydra_override():
            if not (override.is_force_add() or override.type == OverrideType.CHANGE) or not key.startswith("hydra.job.env_set."):
                return False
        elif not (override.is_force_add() or override.type == OverrideType.CHANGE):
            return False
        return (override.package is None and not override.is_sweep_override()
                and "/" not in key and key not in self._groups and key not in self._structural
                and not isinstance(override.value(), (dict, list)))

    def _key(self, parsed: list[Override]) -> tuple:
        return tuple(("=", o.key_or_group) if self._is_value(o) else o.input_line for o in parsed)

def _is_leaf(cfg: DictConfig, key: str) -> bool:
    """Whether `key` names a value (not a container) in `cfg`."""
    node = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False, throw_on_resolution_failure=False)
    return node is not _ABSENT and not isinstance(node, Container)


class ComposedOnceLoader:
    """Hydra's config loader for a sweep's launcher, composing its jobs through `configs` (a
    `TrialConfigs` over `loader.load_sweep_config(master, ...)`): a launcher that composes each
    job in the sweep process (Hydra's basic launcher) then pays a full composition once per
    structure, as the sweep's worker processes do (app/search/pool.py). Every other call, and a
    master config other than the sweep's, goes to `loader`."""

    def __init__(self, loader: Any, master: DictConfig, configs: TrialConfigs) -> None:
        self._loader, self._master, self._configs = loader, master, configs

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        if master_config is not self._master:
            return self._loader.load_sweep_config(master_config, sweep_overrides)
        return self._configs(list(sweep_overrides))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)
