"""Key specifications for decorators, and the typed decorator protocol.

A key spec is either a ``str.format`` template over the decorated function's
bound arguments (``"checkout:{user_id}"``, ``"{0}"``, ``"{order.id}"``) or a
callable taking the same arguments as the function and returning the key.
"""

from __future__ import annotations

import inspect
import string
from collections.abc import Callable, Hashable
from typing import Any, ParamSpec, Protocol, TypeVar

from ._validate import check_key

__all__ = ["Decorator", "KeySpec", "key_function"]

P = ParamSpec("P")
R = TypeVar("R")

KeySpec = str | Callable[..., Hashable]


class Decorator(Protocol):
    """A decorator that keeps the decorated function's signature and kind (an async
    function's ``R`` is its coroutine: one signature serves both, and a generic function
    stays generic)."""

    def __call__(self, fn: Callable[P, R], /) -> Callable[P, R]: ...


def _field_roots(template: str) -> list[str]:
    roots = []
    for _, field, _, conversion in string.Formatter().parse(template):
        if field is None:
            continue
        if conversion not in (None, "r", "s", "a"):
            raise ValueError(f"unknown conversion !{conversion} (use !r, !s or !a)")
        root = field
        for sep in (".", "["):
            root = root.split(sep, 1)[0]
        roots.append(root)
    return roots


def key_function(spec: KeySpec, fn: Callable[..., Any]) -> Callable[..., Hashable]:
    """Turn a key spec into a function of ``fn``'s arguments returning the key.

    A template is checked against ``fn``'s signature once, at decoration time:
    a field that names no parameter raises ValueError there.
    """
    if not callable(fn):
        raise TypeError(f"the decorator needs a callable (a def or async def), got {fn!r}")
    if isinstance(spec, str):
        return _template_key(spec, fn)
    if callable(spec):
        user_key = spec

        def call_key(*args: Any, **kwargs: Any) -> Hashable:
            return check_key(user_key(*args, **kwargs))

        return call_key
    raise TypeError(
        f"key must be a str.format template or a callable returning the key, got {spec!r}"
    )


def _template_key(template: str, fn: Callable[..., Any]) -> Callable[..., Hashable]:
    try:
        roots = _field_roots(template)
    except ValueError as exc:
        raise ValueError(f"invalid key template {template!r}: {exc}") from None
    if not roots:
        constant = template
        return lambda *args, **kwargs: constant
    sig = inspect.signature(fn)
    params = sig.parameters
    var_kw = next((p.name for p in params.values() if p.kind is p.VAR_KEYWORD), None)
    positional = [
        p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    var_args = any(p.kind is p.VAR_POSITIONAL for p in params.values())
    auto = 0
    for root in roots:
        if root == "" or root.isdigit():
            # Positional fields index the bound positional arguments: {} counts up, {0} names one.
            index = auto if root == "" else int(root)
            auto += root == ""
            if index >= len(positional) and not var_args:
                raise ValueError(
                    f"key template {template!r} uses positional field {index}, but "
                    f"{getattr(fn, '__qualname__', fn)!r}{sig} has only {len(positional)} "
                    "positional parameter(s); name the parameter instead, e.g. {user_id}"
                )
            continue
        if root == var_kw:
            raise ValueError(
                f"key template {template!r} names {{{root}}}, the **{root} of "
                f"{getattr(fn, '__qualname__', fn)!r}{sig}: name the keyword argument "
                "itself, e.g. {user_id}"
            )
        if root not in params and var_kw is None:
            raise ValueError(
                f"key template {template!r} names {{{root}}}, which is not a parameter of "
                f"{getattr(fn, '__qualname__', fn)!r}{sig}"
            )

    def template_key(*args: Any, **kwargs: Any) -> Hashable:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        names = bound.arguments
        if var_kw is not None:
            names = dict(names)
            names.update(names.pop(var_kw, {}))
            try:
                return template.format(*bound.args, **names)
            except KeyError as exc:
                if not exc.args or exc.args[0] not in roots or exc.args[0] in names:
                    raise  # (a missing index inside a field, say)
                # A field left to **kwargs that this call did not pass.
                raise TypeError(
                    f"key template {template!r} needs the keyword argument {exc.args[0]!r}, "
                    "which this call did not pass"
                ) from None
        return template.format(*bound.args, **names)

    return template_key
