"""Route table: (method, schema path template) -> handler(ctx, params)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .auth import Identity
    from .faults import FiredFaults
    from .node import Node
    from .schema import Endpoint


@dataclass
class Ctx:
    node: "Node"
    ident: "Identity"
    endpoint: "Endpoint"
    fired: "FiredFaults"
    method: str
    path: str
    extra: dict[str, Any] = field(default_factory=dict)  # "total"/"changes" for the envelope
    files: dict[str, Any] = field(default_factory=dict)  # uploaded files (multipart)


Handler = Callable[[Ctx, dict[str, Any]], Any]
HANDLERS: dict[tuple[str, str], Handler] = {}


def route(method: str, template: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        HANDLERS[(method, template)] = fn
        return fn

    return deco


def load_handlers() -> dict[tuple[str, str], Handler]:
    from .handlers import access, agent, cluster, qemu, storage, tasks  # noqa: F401  (registers routes)

    return HANDLERS
