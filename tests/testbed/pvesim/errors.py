"""Exceptions that become PVE-shaped HTTP errors.

PVE (pve-http-server) puts the message in the HTTP reason phrase and, since
pve-http-server 5.2.0, also in the JSON body: ``{"data":null,"message":"...\\n"}``.
Parameter errors (``raise_param_exc``) are 400 ``Parameter verification failed.``
with ``{"data":null,"errors":{"<param>":"<msg>"}}``.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ApiError(Exception):
    """An error answered to the client (never a traceback)."""

    status: int
    message: str
    errors: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bool = True  # pveproxy's auth failures have no body at all

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:  # pragma: no cover - debugging aid
        return f"{self.status} {self.message.strip()}"


def die(message: str) -> ApiError:
    """Like Perl ``die "...\\n"`` inside an API handler before forking: HTTP 500."""
    if not message.endswith("\n"):
        message += "\n"
    return ApiError(500, message)


def param_error(errors: dict[str, str]) -> ApiError:
    """PVE::Exception::raise_param_exc."""
    return ApiError(400, "Parameter verification failed.\n", errors=dict(errors))


def perm_error(what: str | None = None) -> ApiError:
    """PVE::RPCEnvironment raise_perm_exc."""
    msg = "Permission check failed" + (f" ({what})" if what else "")
    return ApiError(403, msg + "\n")


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, body=False)


class TaskError(Exception):
    """Raised inside a worker: the task ends with ``TASK ERROR: <msg>``."""
