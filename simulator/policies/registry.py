"""Name → class registries for pluggable policies, plus a dotted import path escape hatch.

A family (eviction, routing, …) owns one :class:`Registry`; a policy class joins it with
``@REGISTRY.register("name")``. A scenario names a policy by its registered name, or by
``"package.module:Class"`` (or ``package.module.Class``) for a user's own class, as vLLM's
``scheduler_cls`` does. A dotted path must name a class that implements the family's interface
(one of its method sets), checked before anything is instantiated: never a function, a builtin
or another family's policy.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable

from ..errors import KvsimError


class Registry:
    """Policies of one family, by name."""

    def __init__(self, family: str, interfaces: tuple[dict[str, int], ...] = ()):
        """``interfaces``: the method sets a policy of this family may implement, each method
        with the number of arguments it takes after ``self``."""
        self.family = family
        self.interfaces = interfaces
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

    def _check_interface(self, name: str, obj) -> type:
        if not inspect.isclass(obj) or not self.interfaces:
            if not inspect.isclass(obj):
                raise KvsimError(f"{self.family} policy {name!r} is not a class")
            return obj
        for methods in self.interfaces:
            if all(_takes(getattr(obj, m, None), n) for m, n in methods.items()):
                return obj
        wanted = " or ".join(
            ", ".join(f"{m}({n} argument{'s' * (n != 1)})" for m, n in i.items())
            for i in self.interfaces
        )
        raise KvsimError(
            f"{self.family} policy {name!r} does not implement the {self.family} interface "
            f"(methods {wanted})"
        )

    def resolve(self, name: str) -> type:
        """The class a scenario names; a clear one-line error otherwise."""
        if name in self._classes:
            return self._classes[name]
        if "." in name or ":" in name:
            module, _, attr = name.rpartition(":") if ":" in name else name.rpartition(".")
            if not module or not attr or not all(p.isidentifier() for p in module.split(".")):
                raise KvsimError(f"{self.family} policy {name!r} is not a valid import path")
            try:
                obj = getattr(importlib.import_module(module), attr)
            except Exception as e:  # noqa: BLE001 - a user's module may fail in any way
                raise KvsimError(
                    f"{self.family} policy {name!r} cannot be imported ({type(e).__name__}: {e})"
                ) from None
            return self._check_interface(name, obj)
        hint = difflib.get_close_matches(name, self._classes, n=1)
        did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
        raise KvsimError(
            f"unknown {self.family} policy {name!r}; allowed: {', '.join(self.names())} "
            f"or a dotted import path{did_you_mean}"
        )

    def create(self, name: str, *args, **params):
        """An instance of the policy ``name``: ``cls(*args, **params)`` (``args`` are what the
        family gives every policy, e.g. an eviction context)."""
        cls = self.resolve(name)
        try:
            inspect.signature(cls).bind(*args, **params)
        except TypeError as e:
            raise KvsimError(
                f"{self.family} policy {name!r}: bad parameters {params} ({e})"
            ) from None
        try:
            return cls(*args, **params)
        except (TypeError, ValueError) as e:
            raise KvsimError(f"{self.family} policy {name!r}: {e}") from None


def _takes(method, n: int) -> bool:
    """``method`` is a plain function on the class accepting ``n`` positional arguments after
    ``self``."""
    if not inspect.isfunction(method):
        return False
    try:
        inspect.signature(method).bind(None, *range(n))
    except TypeError:
        return False
    return True
