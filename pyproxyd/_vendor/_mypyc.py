"""mypyc's class decorators for the vendored modules, without needing
mypy_extensions at run time (a user's install has no mypy).

mypyc recognises them by their full name (mypy_extensions.trait, ...), which the
type checker sees through this import; a compiled native class never calls
them, and interpreted code gets the no-ops below."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from mypy_extensions import mypyc_attr, trait
else:
    _C = TypeVar("_C")

    def trait(cls: _C) -> _C:
        return cls

    def mypyc_attr(*_args: Any, **_kwargs: Any) -> Any:
        return lambda cls: cls

__all__ = ["mypyc_attr", "trait"]
