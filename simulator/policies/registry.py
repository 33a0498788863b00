"""Name → class registries for pluggable policies, plus a dotted import path escape hatch.

A family (eviction, routing, …) owns one :class:`Registry`; a policy class joins it with
``@REGISTRY.register("name")``. A scenario names a policy by its registered name, or by
``"package.module:Class"`` (or ``package.module.Class``) for a user's own class, as vLLM's
``scheduler_cls`` does.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable

from ..errors import KvsimError


class Registry:
    """Policies of one family, by name."""

    def __init__(self, family: str):
        self.family = family
        self._classes: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type], type]:
        def decorate(cls: type) -> type:
            if name in self._classes:
                raise ValueError(f"{self.family} policy {name!r} registered twice")
            self._classes[name] = cls
            cls.policy_name = name
            return cls

        return decorate

    def names(self) -> list[str]:
        return sorted(self._classes)

    def resolve(self, name: str) -> type:
        """The class a scenario names; a clear one-line error otherwise."""
        if name in self._classes:
            return self._classes[name]
        if "." in name or ":" in name:
            module, _, attr = name.rpartition(":") if ":" in name else name.rpartition(".")
            try:
                return getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:
                raise KvsimError(
                    f"{self.family} policy {name!r} cannot be imported ({e})"
                ) from None
        hint = difflib.get_close_matches(name, self._classes, n=1)
        did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
        raise KvsimError(
            f"unknown {self.family} policy {name!r}; allowed: {', '.join(self.names())} "
            f"or a dotted import path{did_you_mean}"
        )

    def create(self, name: str, **params):
        cls = self.resolve(name)
        try:
            return cls(**params)
        except TypeError as e:
            raise KvsimError(
                f"{self.family} policy {name!r}: bad parameters {params} ({e})"
            ) from None
