"""`ConfigError`: the one error type for a user's mistake (a config key, or the data it names).

`str()` is one paragraph naming the key, the value, why it is refused and what is accepted:

    Invalid value for `data.path`: 'x.csv'. No such file. Accepted: a CSV or NPZ file.

The app prints it instead of a traceback and exits with status 2; nothing is written over.
"""
from __future__ import annotations

import os
from typing import Any

_MAX_VALUE_REPR = 120  # keep the paragraph readable when the value is a long list


def _short_repr(value: Any) -> str:
    """repr of `value` (paths shown as plain strings), cut to a readable length."""
    text = repr(os.fspath(value)) if isinstance(value, os.PathLike) else repr(value)
    return text if len(text) <= _MAX_VALUE_REPR else text[: _MAX_VALUE_REPR - 3] + "..."


class ConfigError(Exception):
    """A user's configuration (or the data it names) is wrong: `key` (e.g. "data.path"), the
    offending `value`, what is `accepted`, and optionally the `reason`."""

    def __init__(self, key: str, value: Any, accepted: str, reason: str = "") -> None:
        self.key, self.value, self.accepted, self.reason = key, value, accepted, reason
        why = f" {reason.strip().rstrip('.')}." if reason.strip() else ""
        super().__init__(f"Invalid value for `{key}`: {_short_repr(value)}.{why} "
                         f"Accepted: {accepted.strip().rstrip('.')}.")

    def __reduce__(self):  # the default would call __init__(message): keep it picklable for workers
        # (with its other attributes, e.g. `recorded`: a rank's summary.json is not to be replaced)
        return (type(self), (self.key, self.value, self.accepted, self.reason), dict(self.__dict__))
