"""Which `_target_`s a config may build: a config file is data, not code.

A `_target_` names a Python callable that `hydra.utils.instantiate` imports and calls, so a
config file from anywhere (a colleague's config dir, a downloaded preset) could otherwise run
any function (`os.makedirs`, `subprocess.run`) before the app notices it is not a model or a
dataset. Every instantiation in the app goes through `instantiate` below: targets are allowed
only under the app's own modules, torch and optuna, plus the module prefixes a user lists in the
`trusted_modules` config key for their own code. Anything else is refused before it is
imported, naming the key, the target and how to allow it. Hydra's execution whitelist enforces
the same list inside `instantiate` (it also checks where an imported name really lives, so an
alias such as `app.os.system` cannot slip through).
"""
from __future__ import annotations

import re
from typing import Any, Iterable

from omegaconf import DictConfig, ListConfig

from app.errors import ConfigError

APP_MODULES = ("app", "torch", "optuna")  # always trusted


def patterns(trusted_modules: Iterable[str] = ()) -> tuple[str, ...]:
    """Hydra execution-whitelist patterns: `<module>.*` for each trusted module prefix. An entry
    ending in `.*` is taken as it is; any other entry allows that module and everything under it."""
    allowed: list[str] = []
    for entry in (*APP_MODULES, *trusted_modules):
        entry = str(entry).strip()
        if not entry:
            continue
        allowed.append(entry if entry.endswith(".*") else f"{entry}.*")
    return tuple(dict.fromkeys(allowed))


def is_allowed(target: str, allowed: tuple[str, ...]) -> bool:
    return any(target.startswith(pattern[:-1]) for pattern in allowed)


def _targets(node: Any, key: str) -> Iterable[tuple[str, str]]:
    """(full key, target) of every `_target_` in `node` and its children."""
    if isinstance(node, (DictConfig, dict)):
        for child_key, child in node.items():
            path = f"{key}.{child_key}" if key else str(child_key)
            if child_key == "_target_":
                yield path, child
            else:
                yield from _targets(child, path)
    elif isinstance(node, (ListConfig, list, tuple)):
        for index, child in enumerate(node):
            yield from _targets(child, f"{key}[{index}]")


def refusal(key: str, target: str, allowed: tuple[str, ...], resolved: str | None = None) -> ConfigError:
    """The error for an untrusted `target` (`resolved`: where the name really leads, if elsewhere)."""
    module = (resolved or target).split(".")[0]
    return ConfigError(
        key, f"{target} (which is {resolved})" if resolved else target,
        f"a callable under {', '.join(p[:-2] for p in allowed)}; if `{module}` is your own code, add it to "
        f"the `trusted_modules` config key: `'trusted_modules=[{module}]'` on the command line or "
        f"`trusted_modules: [{module}]` in your config",
        "A config file is not code: this target is outside the modules the app trusts, so it was "
        "not run",
    )


def check(node: Any, key: str, trusted_modules: Iterable[str] = ()) -> tuple[str, ...]:
    """Refuse `node` (at config `key`) if any `_target_` in it is outside the trusted modules;
    return the whitelist patterns. Nothing is imported."""
    allowed = patterns(trusted_modules)
    for path, target in _targets(node, key):
        name = target if isinstance(target, str) else f"{target.__module__}.{target.__qualname__}"
        if not is_allowed(name, allowed):
            raise refusal(path, name, allowed)
    return allowed


def instantiate(node: Any, key: str, trusted_modules: Iterable[str] = (), *args: Any, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate(node, *args, **kwargs)` once every target in `node` is allowed.
    Hydra refuses a trusted-looking name that resolves elsewhere (`torch.os.system`): that is
    reported the same way, naming what it resolved to."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    if isinstance(node, DictConfig):
        # The node's values, interpolations resolved in their place in the config: Hydra builds
        # the same objects from them, without copying the node and its parents first (a few ms
        # a node, paid by every trial of a pack). Where a value does not resolve, Hydra is given
        # the node and reports it as it always does.
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        try:
            node = OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException:
            pass
    allowed = check(node, key, trusted_modules)
    try:
        return hydra_instantiate(node, *args, _execution_whitelist_=list(allowed), **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, ConfigError):  # a class's own check of its arguments
            raise error.__cause__ from None
        resolved = re.search(r"Target '([^']+)' \(resolved from '([^']+)'\) is not in the Hydra execution whitelist",
                             str(error))
        if resolved is None:
            raise
        raise refusal(f"{key}._target_", resolved.group(2), allowed, resolved.group(1)) from None


def locate(target: str, key: str, trusted_modules: Iterable[str] = ()) -> Any:
    """Import the callable `target` names (without calling it) once it is allowed."""
    from hydra.utils import get_method

    check({"_target_": target}, key.removesuffix("._target_"), trusted_modules)
    return get_method(target)
