"""Name → class registries for pluggable policies, plus a dotted import path escape hatch.

A family (eviction, routing, …) owns one :class:`Registry`; a policy class joins it with
``@REGISTRY.register("name")``. A scenario names a policy by its registered name, or by
``"package.module:Class"`` (or ``package.module.Class``) for a user's own class, as vLLM's
``scheduler_cls`` does. A dotted path must name a class that implements the family's interface
(one of its method sets), checked before anything is instantiated: never a function, a builtin
or another family's policy.

A scenario is data, so naming a module must not run code the user did not install: the module is
imported from the installed packages (``sys.path``) or from a folder the user names
(``kvsim run --policy-path DIR``), never implicitly from the current folder — ``python -m``
and an interactive interpreter put it first on ``sys.path``, where a scenario could otherwise
pick up any ``*.py`` lying there.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ..errors import KvsimError, clip, echo


class Registry:
    """Policies of one family, by name."""

    def __init__(
        self, family: str, interfaces: tuple[dict[str, int], ...] = (), field: str | None = None
    ):
        """``interfaces``: the method sets a policy of this family may implement, each method
        with the number of arguments it takes after ``self``; ``field``: the scenario field that
        names it (errors raised while building a policy start with it)."""
        self.family = family
        self.field = field
        self.interfaces = interfaces
        self._classes: dict[str, type] = {}
        self._imported: dict[str, type] = {}
        """Dotted paths resolved so far: a run uses the class its scenario was validated with."""

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
        if not inspect.isclass(obj):
            raise KvsimError(f"{self.family} policy {echo(name)} is not a class")
        if not self.interfaces:
            return obj
        for methods in self.interfaces:
            if all(_takes(getattr(obj, m, None), n) for m, n in methods.items()):
                return obj
        wanted = " or ".join(
            ", ".join(f"{m}({n} argument{'s' * (n != 1)})" for m, n in i.items())
            for i in self.interfaces
        )
        raise KvsimError(
            f"{self.family} policy {echo(name)} does not implement the {self.family} interface "
            f"(methods {wanted})"
        )

    def resolve(self, name: str, search: Sequence[str | Path] = ()) -> type:
        """The class a scenario names; a clear one-line error otherwise. A dotted path is
        imported from the installed packages or from the folders in ``search``."""
        if name in self._classes:
            return self._classes[name]
        if name in self._imported:
            return self._imported[name]
        if "." in name or ":" in name:
            module, _, attr = name.rpartition(":") if ":" in name else name.rpartition(".")
            if (
                not module
                or not attr.isidentifier()
                or not all(p.isidentifier() for p in module.split("."))
            ):
                raise KvsimError(f"{self.family} policy {echo(name)} is not a valid import path")
            try:
                with _import_path(search):
                    obj = getattr(importlib.import_module(module), attr)
            except Exception as e:  # noqa: BLE001 - a user's module may fail in any way
                where = " or the --policy-path folders" if search else ""
                top = module.split(".")[0]
                here = Path(top + ".py").is_file() or Path(top).is_dir()
                hint = "; the current folder is searched only if named: --policy-path ." * here
                raise KvsimError(
                    f"{self.family} policy {echo(name)} cannot be imported from the installed "
                    f"packages{where} ({type(e).__name__}: {clip(str(e), 120)}){hint}"
                ) from None
            cls = self._check_interface(name, obj)
            self._imported[name] = cls
            return cls
        hint = difflib.get_close_matches(name, self._classes, n=1)
        did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
        raise KvsimError(
            f"unknown {self.family} policy {echo(name)}; allowed: {', '.join(self.names())} "
            f"or a dotted import path{did_you_mean}"
        )

    def check_params(self, name: str, params: dict, leading: int = 0) -> type:
        """The class ``name`` resolves to, after checking that it accepts ``params`` as keyword
        arguments after ``leading`` positional ones (what the family passes every policy)."""
        cls = self.resolve(name)
        try:
            inspect.signature(cls).bind(*range(leading), **params)
        except TypeError as e:
            raise KvsimError(f"{clip(name)}: bad parameters {echo(params)} ({e})") from None
        except ValueError:  # no signature to inspect (a class implemented in C): let it be
            pass
        return cls

    def create(self, name: str, *args, **params):
        """An instance of the policy ``name``: ``cls(*args, **params)`` (``args`` are what the
        family gives every policy, e.g. an eviction context)."""
        cls = self.resolve(name)
        where = f"{self.field}: " if self.field else ""
        try:
            inspect.signature(cls).bind(*args, **params)
        except TypeError as e:
            raise KvsimError(
                f"{where}{self.family} policy {echo(name)}: bad parameters {echo(params)} ({e})"
            ) from None
        try:
            return cls(*args, **params)
        except (TypeError, ValueError, ArithmeticError) as e:
            raise KvsimError(f"{where}{self.family} policy {echo(name)}: {clip(str(e))}") from None


@contextlib.contextmanager
def _import_path(search: Sequence[str | Path]) -> Iterator[None]:
    """``sys.path`` without the current folder (``''`` or its absolute path) for the duration
    of one import, and with the ``search`` folders first (they stay: a user's policy may import
    its own modules later)."""
    cwd = os.path.realpath(os.getcwd())
    dirs = [str(Path(d).resolve()) for d in search]
    saved = dirs + [p for p in sys.path if p not in dirs]
    sys.path[:] = [p for p in saved if p and (p in dirs or os.path.realpath(p) != cwd)]
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path[:] = saved


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
