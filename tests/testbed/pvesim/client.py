"""Python handle on the simulator's ``/_sim`` control API (fault injection etc.)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests


class SimAdminError(Exception):
    pass


@dataclass
class SimAdmin:
    """``SimAdmin("https://10.99.0.1:8006", secret, ca_path)``; call inside the test bed's netns."""

    base: str  # https://host:port (no /api2/json)
    secret: str
    ca: str
    timeout: float = 30.0

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, Any] | None = None) -> Any:
        resp = requests.request(method, self.base.rstrip("/") + path, json=body, params=params,
                                headers={"Authorization": f"PVESimAdmin {self.secret}"}, verify=self.ca,
                                timeout=self.timeout)
        try:
            data = resp.json()
        except ValueError:
            data = {"error": resp.text}
        if resp.status_code != 200:
            raise SimAdminError(f"{method} {path}: {resp.status_code} {data.get('error')}")
        return data.get("data")

    # -- faults ---------------------------------------------------------------
    def add_fault(self, action: str, path: str, *, method: str = "*", nth: int = 1, times: int = 1,
                  status: int = 500, message: str | None = None, errors: dict[str, str] | None = None,
                  seconds: float = 0.0) -> dict[str, Any]:
        """See ``tests/testbed/pvesim/faults.py`` for the actions."""
        spec: dict[str, Any] = {"action": action, "path": path, "method": method, "nth": nth, "times": times,
                                "status": status, "seconds": seconds}
        if message is not None:
            spec["message"] = message
        if errors is not None:
            spec["errors"] = errors
        return self._call("POST", "/_sim/faults", spec)

    def fail(self, method: str, path: str, status: int = 500, message: str = "simulated failure", nth: int = 1,
             times: int = 1) -> dict[str, Any]:
        return self.add_fault("fail", path, method=method, status=status, message=message, nth=nth, times=times)

    def delay(self, method: str, path: str, seconds: float, nth: int = 1, times: int = 1) -> dict[str, Any]:
        return self.add_fault("delay", path, method=method, seconds=seconds, nth=nth, times=times)

    def delay_answer(self, method: str, path: str, seconds: float, nth: int = 1, times: int = 1) -> dict[str, Any]:
        return self.add_fault("delay_answer", path, method=method, seconds=seconds, nth=nth, times=times)

    def task_error(self, method: str, path: str, message: str, nth: int = 1, times: int = 1) -> dict[str, Any]:
        return self.add_fault("task_error", path, method=method, message=message, nth=nth, times=times)

    def clone_lock_timeout(self, nth: int = 1, times: int = 1, path: str = "/nodes/*/qemu/*/clone") -> dict[str, Any]:
        return self.add_fault("clone_lock_timeout", path, method="POST", nth=nth, times=times)

    def stuck_clone_lock(self, nth: int = 1, path: str = "/nodes/*/qemu/*/clone") -> dict[str, Any]:
        return self.add_fault("stuck_lock", path, method="POST", nth=nth)

    def slow_task(self, method: str, path: str, seconds: float, nth: int = 1) -> dict[str, Any]:
        return self.add_fault("slow_task", path, method=method, seconds=seconds, nth=nth)

    def slow_start(self, method: str, path: str, seconds: float, nth: int = 1) -> dict[str, Any]:
        return self.add_fault("slow_start", path, method=method, seconds=seconds, nth=nth)

    def take_vmid_on_clone(self, nth: int = 1, path: str = "/nodes/*/qemu/*/clone") -> dict[str, Any]:
        return self.add_fault("take_vmid", path, method="POST", nth=nth)

    def slow_agent(self, seconds: float, vmid: int | None = None, name: str | None = None) -> None:
        """The agent of ``vmid`` (or of the VMs named like the glob ``name``, or of all) does not
        answer for ``seconds`` after its VM started; 0 lifts that at once."""
        self._call("POST", "/_sim/agent-delay", {"vmid": vmid, "seconds": seconds, "name": name})

    def clear_faults(self) -> None:
        self._call("DELETE", "/_sim/faults")

    def faults(self) -> dict[str, Any]:
        return self._call("GET", "/_sim/faults")

    # -- state ----------------------------------------------------------------
    def take_vmid(self, vmid: int) -> None:
        """Another client creates VM ``vmid`` right now."""
        self._call("POST", "/_sim/vms", {"vmid": vmid})

    def state(self) -> dict[str, Any]:
        return self._call("GET", "/_sim/state")

    def requests_log(self, since: int = 0) -> list[dict[str, Any]]:
        return self._call("GET", "/_sim/requests", params={"since": since})

    def unimplemented(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_sim/unimplemented")

    def add_token(self, tokenid: str, *, roles: list[str] | None = None, privs: list[str] | None = None,
                  path: str = "/", privsep: bool = True) -> str:
        """Create an API token with ACLs; returns its secret."""
        data = self._call("POST", "/_sim/tokens", {"tokenid": tokenid, "roles": roles or [], "privs": privs or [],
                                                   "path": path, "privsep": privsep})
        return data["secret"]

    def add_user(self, userid: str, password: str, *, roles: list[str] | None = None,
                 privs: list[str] | None = None, path: str = "/") -> None:
        self._call("POST", "/_sim/users", {"userid": userid, "password": password, "roles": roles or [],
                                           "privs": privs or [], "path": path})

    def trust_ca(self, pem: str) -> None:
        """The node trusts this CA from now on (download-url verifies HTTPS servers against it)."""
        self._call("POST", "/_sim/trusted-cas", {"pem": pem})

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/_sim/health")

    def shutdown(self) -> None:
        self._call("POST", "/_sim/shutdown")
