"""Config classes that the registry completes (`Service.config`), built as a test means them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

C = TypeVar("C")


def with_defaults(cls: type[C], **fields: Any) -> C:
    """`cls(**fields)`, every other field at the default the registry gave it.

    The registry sets the defaults at import, so mypy sees only the bare annotations and takes every
    registry field for a required argument; the call itself is the plain constructor's."""
    return cast(Callable[..., C], cls)(**fields)
