"""A thin wrapper over proxmoxer: auth, TLS, timeouts, retries, PVE encoding rules, tasks.

    client = ProxmoxClient(creds, timeout=config.proxmox.timeout)
    upid = client.clone("pve", 9004, 120, name="golden-verify-1")
    client.wait_task(upid, timeout=900)            # raises ProxmoxTaskError unless OK / WARNINGS: N

Every failure is a :class:`~nixgold.errors.ProxmoxError` (or :class:`ProxmoxTaskError`) carrying
PVE's own message. Rules this module enforces (sources: the PVE 9.1 API schema, pve-common's
JSONSchema/RESTHandler, qemu-server's API2/Qemu.pm, proxmoxer's https backend):

* **Encoding**: Python booleans become ``1``/``0`` (PVE's JSONSchema rejects ``True``), ``None``
  values are dropped, hyphenated keys (``destroy-unreferenced-disks``) pass through unchanged, and
  ``sshkeys`` is percent-encoded with ``urllib.parse.quote(keys, safe="")`` (format ``urlencoded``).
* **TLS**: verified against ``Credentials.ca_bundle`` or the system CA store, passed *per request*
  (proxmoxer does; requests lets ``$REQUESTS_CA_BUNDLE`` override only a session-level setting).
  ``insecure=True`` only when the user passes ``--insecure``; it logs a warning.
* **Timeouts**: at least 30 s per request (proxmoxer's default of 5 s breaks synchronous calls).
* **Retries** (:class:`RetryPolicy`): a call is retried with exponential backoff only when doing
  it twice cannot hurt:

  - *idempotent* calls (every GET; PUTs/POSTs that set absolute state such as ``config`` values,
    ``status/stop``) on connection errors, read timeouts and HTTP 502, 503, 504, 595, 596;
  - *any* call, including task-spawning POSTs (``clone``, ``status/start``, ``resize +1G``), only
    when the request provably never reached PVE: the TCP/TLS connection could not be established,
    or HTTP 595 (pveproxy could not connect to the target node). A 500 from ``clone`` (PVE died
    before forking the worker, e.g. "config file already exists") or a read timeout after the
    request was sent is *not* retried blindly: the caller decides (new vmid, wait for a lock, or
    fail and let cleanup look for a half-created VM). When the request was sent and no answer
    says whether it took effect, the error is an :class:`OutcomeUnknown`;
  - ``DELETE`` of a VM (:meth:`ProxmoxClient.destroy`) is *not* idempotent: it starts a task, and a
    second DELETE while (or after) the first one's task runs fails with "VM is locked" or "does
    not exist". After an :class:`OutcomeUnknown` it looks before it repeats: a running destroy
    task of that vmid is the one the lost request started (its UPID is returned); the VM gone
    means a destroy already finished (the newest destroy task's UPID); only a VM that still
    exists with no destroy running gets the DELETE again.
* **Threads**: one client may be used from several threads (verify boots clones in parallel):
  each thread gets its own proxmoxer API object (its own ``requests.Session``; an injected
  ``api`` is shared), and the retry counter is kept under a lock.
* **Logging**: request bodies are never logged; proxmoxer logs ``data`` at INFO, so its loggers
  are held at WARNING and a filter drops anything below WARNING from them.
"""

from __future__ import annotations

import logging
import random
import re
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from nixgold.config.credentials import Credentials
from nixgold.errors import ProxmoxError, ProxmoxTaskError

log = logging.getLogger("nixgold.proxmox")

MIN_TIMEOUT = 30

#: Statuses worth retrying for idempotent calls: proxy/gateway trouble, not PVE's verdict.
RETRY_STATUSES = frozenset({502, 503, 504, 595, 596})

#: Statuses that prove the request never reached the node (AnyEvent::HTTP 595): safe for any call.
NEVER_SENT_STATUSES = frozenset({595})

TASK_OK_RE = re.compile(r"^(OK|WARNINGS: \d+)$")


class OutcomeUnknown(ProxmoxError):
    """The request was sent, and no answer says whether PVE acted on it (a read timeout, the
    connection lost after sending, a gateway error): the caller must look before it repeats."""

UPID_RE = re.compile(
    r"^UPID:([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?):([0-9A-Fa-f]{8}):([0-9A-Fa-f]{8,9}):([0-9A-Fa-f]{8}):"
    r"([^:\s/]+):([^:\s/]*):([^:\s/]+):$")

PERMISSION_RE = re.compile(r"Permission check failed(?: \((?P<path>[^,)]+), (?P<privs>[^)]+)\))?")

#: Agent commands PVE 9.1 exposes as POST (the rest of the simple ones are GET).
AGENT_POST_COMMANDS = frozenset({"ping", "fsfreeze-freeze", "fsfreeze-status", "fsfreeze-thaw", "fstrim", "shutdown",
                                 "suspend-disk", "suspend-hybrid", "suspend-ram"})

class _DropBelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING

_QUIET = _DropBelowWarning()

def silence_proxmoxer() -> None:
    """proxmoxer logs request ``data`` (passwords, keys) at INFO: never let that through."""
    for name in ("proxmoxer", "proxmoxer.core", "proxmoxer.backends.https"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        if _QUIET not in logger.filters:
            logger.addFilter(_QUIET)

# --- encoding ----------------------------------------------------------------------------
def encode_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """PVE form/query encoding: bool -> 1/0, None dropped, lists of scalars kept (repeated keys)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = int(value)
        elif isinstance(value, (list, tuple)):
            value = [int(v) if isinstance(v, bool) else v for v in value]
        out[key] = value
    return out

def encode_sshkeys(keys: str | Iterable[str]) -> str:
    """The ``sshkeys`` value: one key per line, percent-encoded with nothing left safe.

    PVE checks ``/^[-%a-zA-Z0-9_.!~*'()]*$/`` and then uri-unescapes; ``quote_plus`` would turn
    spaces into ``+``, which PVE keeps as a literal ``+`` and the keys stop parsing.
    """
    text = keys if isinstance(keys, str) else "\n".join(k.strip() for k in keys if k.strip())
    if not text.endswith("\n"):
        text += "\n"
    return urllib.parse.quote(text, safe="")

@dataclass(frozen=True)
class Upid:
    node: str
    type: str
    id: str
    user: str
    text: str

def parse_upid(text: str) -> Upid:
    m = UPID_RE.match(text or "")
    if not m:
        raise ProxmoxError(f"PVE returned something that is not a task id (UPID): {text!r}")
    return Upid(node=m.group(1), type=m.group(6), id=m.group(7), user=m.group(8), text=text)

def task_succeeded(exitstatus: str | None) -> bool:
    """PVE::UPID status_is_error, inverted: ``OK`` or ``WARNINGS: <n>``."""
    return exitstatus is not None and TASK_OK_RE.match(exitstatus) is not None

# --- retries -------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; sleeps ``base * 2**k`` (capped, with +-25 % jitter) between them."""

    attempts: int = 5
    base: float = 0.5
    cap: float = 8.0

    def delay(self, attempt: int) -> float:
        raw = min(self.cap, self.base * (2 ** (attempt - 1)))
        return raw * random.uniform(0.75, 1.25)

def _never_sent(exc: BaseException) -> bool:
    """True when requests/urllib3 failed before any byte of the request reached the server."""
    import requests
    from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, (NewConnectionError, ConnectTimeoutError)):
            return True
        if isinstance(cur, MaxRetryError):
            stack.append(cur.reason)
        stack.extend(a for a in getattr(cur, "args", ()) if isinstance(a, BaseException))
        stack.append(cur.__cause__)
        stack.append(cur.__context__)
    return False

def system_ca_store() -> str | bool:
    """The OS CA bundle (Debian: /etc/ssl/certs/ca-certificates.crt via OpenSSL's default paths),
    else True (requests' bundled store)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return candidate
    for candidate in (paths.capath, paths.openssl_capath):
        if candidate and Path(candidate).is_dir():
            return candidate
    return True

# --- the client ------------------------------------------------------------------------------
class ProxmoxClient:
    """proxmoxer with nixgold's rules. ``api`` injects a ready ProxmoxAPI (tests)."""

    def __init__(self, creds: Credentials, *, timeout: int = MIN_TIMEOUT, insecure: bool = False,
                 retry: RetryPolicy | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, api: Any = None) -> None:
        silence_proxmoxer()
        self.creds = creds
        self.timeout = max(MIN_TIMEOUT, int(timeout))
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.clock = clock
        self.retries = 0  # how many times a call was retried (for reports and tests); under _retries_lock
        self._retries_lock = threading.Lock()
        self._local = threading.local()  # one proxmoxer API object (one requests.Session) per thread
        if not creds.url:
            raise ProxmoxError("no Proxmox API URL: set PROXMOX_URL (or proxmox.url)")
        parts = urllib.parse.urlsplit(creds.url)
        self.host = parts.hostname or ""
        self.port = parts.port or 8006
        self.url = f"https://{f'[{self.host}]' if ':' in self.host else self.host}:{self.port}/api2/json"
        if insecure:
            log.warning("TLS certificate verification is OFF for %s (--insecure): anyone on the path "
                        "can read the API token", self.url)
            self.verify: str | bool = False
        else:
            self.verify = creds.ca_bundle or system_ca_store()
        self.authid = creds.token_id or creds.username or ""
        self._shared_api = api  # injected (tests): used by every thread
        if api is None:
            self._local.api = self._connect()  # now, so bad credentials fail here and not at the first call

    @property
    def api(self) -> Any:
        """This thread's proxmoxer API object (a requests.Session is not meant to be shared by threads);
        password login gets a ticket per thread."""
        if self._shared_api is not None:
            return self._shared_api
        api = getattr(self._local, "api", None)
        if api is None:
            api = self._local.api = self._connect()
        return api

    # -- connection ------------------------------------------------------------------------
    def _connect(self) -> Any:
        from proxmoxer import AuthenticationError, ProxmoxAPI

        host = f"[{self.host}]" if ":" in self.host else self.host
        common = {"verify_ssl": self.verify, "timeout": self.timeout}
        if self.creds.token_id and self.creds.token_secret:
            user, _, token_name = self.creds.token_id.partition("!")
            return ProxmoxAPI(f"{host}:{self.port}", user=user, token_name=token_name,
                              token_value=self.creds.token_secret, **common)
        if self.creds.username and self.creds.password:
            # Ticket login happens in the constructor (POST /access/ticket); proxmoxer renews it.
            attempt = 0
            while True:
                attempt += 1
                try:
                    return ProxmoxAPI(f"{host}:{self.port}", user=self.creds.username,
                                      password=self.creds.password, **common)
                except AuthenticationError:
                    raise ProxmoxError(f"authentication failed for {self.creds.username} at {self.url}: "
                                       "check PROXMOX_USERNAME/PROXMOX_PASSWORD", status=401) from None
                except Exception as exc:  # requests errors during the ticket POST
                    self._maybe_retry_transport("POST", "access/ticket", exc, attempt, idempotent=True)
        if self.creds.token_id:
            raise ProxmoxError("PROXMOX_TOKEN_ID is set but PROXMOX_TOKEN_SECRET is not")
        raise ProxmoxError("no Proxmox credentials: set PROXMOX_TOKEN_ID and PROXMOX_TOKEN_SECRET "
                           "(or PROXMOX_USERNAME and PROXMOX_PASSWORD)")

    # -- raw calls -------------------------------------------------------------------------
    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params, idempotent=True)

    def post(self, path: str, *, idempotent: bool = False, **data: Any) -> Any:
        return self.call("POST", path, data, idempotent=idempotent)

    def put(self, path: str, *, idempotent: bool = False, **data: Any) -> Any:
        return self.call("PUT", path, data, idempotent=idempotent)

    def delete(self, path: str, *, idempotent: bool = False, **params: Any) -> Any:
        return self.call("DELETE", path, params, idempotent=idempotent)

    def call(self, method: str, path: str, params: Mapping[str, Any] | None = None, *,
             idempotent: bool) -> Any:
        """One API call with the retry policy; ``path`` is relative to /api2/json."""
        from proxmoxer import ResourceException

        path = path.strip("/")
        encoded = encode_params(params or {})
        attempt = 0
        while True:
            attempt += 1
            log.debug("%s /%s", method, path)  # never the body: it may hold passwords or keys
            try:
                api = self.api
                resource = api(path) if path else api
                return getattr(resource, method.lower())(**dict(encoded))
            except ResourceException as exc:
                status = int(exc.status_code)
                retry_ok = status in (RETRY_STATUSES if idempotent else NEVER_SENT_STATUSES)
                if retry_ok and attempt < self.retry.attempts:
                    self._backoff(method, path, f"HTTP {status} {exc.content}", attempt)
                    continue
                error = self._error(method, path, exc)
                if not idempotent and status in RETRY_STATUSES - NEVER_SENT_STATUSES:
                    # a proxy/gateway error: whether the node got the request is not known
                    raise OutcomeUnknown(str(error), status=status) from None
                raise error from None
            except Exception as exc:
                self._maybe_retry_transport(method, path, exc, attempt, idempotent)

    def _backoff(self, method: str, path: str, why: str, attempt: int) -> None:
        delay = self.retry.delay(attempt)
        with self._retries_lock:
            self.retries += 1
        log.warning("%s /%s: %s; retrying in %.1fs (attempt %d of %d)", method, path, why, delay,
                    attempt + 1, self.retry.attempts)
        self.sleep(delay)

    def _maybe_retry_transport(self, method: str, path: str, exc: Exception, attempt: int,
                               idempotent: bool) -> None:
        """Returns (to retry) or raises ProxmoxError for requests-level failures."""
        import requests

        if isinstance(exc, requests.exceptions.SSLError):
            raise ProxmoxError(
                f"TLS verification of {self.url} failed ({_short(exc)}): point PROXMOX_CA_BUNDLE at the PEM "
                f"of your cluster's CA (or pass --insecure to skip verification)") from None
        if not isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            raise exc
        never_sent = _never_sent(exc)
        if (idempotent or never_sent) and attempt < self.retry.attempts:
            self._backoff(method, path, _short(exc), attempt)
            return
        if isinstance(exc, requests.exceptions.Timeout) and not never_sent:
            raise OutcomeUnknown(f"{method} /{path}: no answer from {self.url} within {self.timeout}s "
                                 f"(proxmox.timeout); the call may or may not have taken effect") from None
        message = (f"cannot reach the Proxmox API at {self.url} ({method} /{path}): {_short(exc)}"
                   + (f" (after {attempt} attempts)" if attempt > 1 else ""))
        raise (ProxmoxError if never_sent else OutcomeUnknown)(message) from None

    def _error(self, method: str, path: str, exc: Any) -> ProxmoxError:
        status = int(exc.status_code)
        content = str(exc.content or "").strip()
        errors = exc.errors if isinstance(exc.errors, dict) else None
        if status == 401:
            if self.creds.token_id and self.creds.token_secret:
                hint = "check PROXMOX_TOKEN_ID/PROXMOX_TOKEN_SECRET"
            else:
                hint = "check PROXMOX_USERNAME/PROXMOX_PASSWORD"
            return ProxmoxError(f"authentication failed: {hint} ({self.authid} at {self.url}; PVE said: "
                                f"{content or exc.status_message})", status=401)
        if status == 403:
            return ProxmoxError(permission_message(content, self.authid, method, path), status=403)
        detail = content or str(exc.status_message or "")
        if errors:
            detail += ": " + "; ".join(f"{k}: {str(v).strip()}" for k, v in sorted(errors.items()))
        return ProxmoxError(f"{method} /{path} failed: {status} {detail}", status=status)

    # -- tasks -----------------------------------------------------------------------------
    def task_status(self, upid: str) -> dict[str, Any]:
        u = parse_upid(upid)
        return self.get(f"nodes/{u.node}/tasks/{upid}/status")

    def task_log(self, upid: str) -> list[str]:
        """The task's log lines (its first 5000); [] when it cannot be read."""
        u = parse_upid(upid)
        try:
            entries = self.get(f"nodes/{u.node}/tasks/{upid}/log", start=0, limit=5000)
        except ProxmoxError:
            return []
        return [str(e.get("t", "")) for e in (entries or [])]

    def task_log_tail(self, upid: str, lines: int = 20) -> list[str]:
        return self.task_log(upid)[-lines:]

    def wait_task(self, upid: str, timeout: float, *, interval: float = 1.0,
                  cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Poll the node named in the UPID until the task stops; raise unless OK / WARNINGS: N.

        Polls quickly at first (0.1 s, doubling up to ``interval``). On timeout raises
        ProxmoxTaskError with exitstatus ``timeout after Ns (still running)`` (``still_running``; so
        too when ``cancel()`` ends the wait).
        """
        parse_upid(upid)
        deadline = self.clock() + timeout
        pause = 0.1
        while True:
            status = self.task_status(upid)
            if status.get("status") == "stopped":
                exitstatus = status.get("exitstatus")
                if task_succeeded(exitstatus):
                    return status
                raise ProxmoxTaskError(upid, str(exitstatus), self.task_log_tail(upid))
            if self.clock() >= deadline:
                raise ProxmoxTaskError(upid, f"timeout after {timeout:.0f}s (task still running)",
                                       self.task_log_tail(upid), still_running=True)
            if cancel is not None and cancel():
                raise ProxmoxTaskError(upid, "no longer waited for (cancelled)", still_running=True)
            self.sleep(min(pause, max(0.0, deadline - self.clock())))
            pause = min(interval, pause * 2)

    # -- cluster ---------------------------------------------------------------------------
    def version(self) -> dict[str, Any]:
        return self.get("version")

    def vm_resources(self) -> list[dict[str, Any]]:
        return [r for r in self.get("cluster/resources", type="vm") or [] if r.get("type") == "qemu"]

    def find_vm(self, vmid: int) -> dict[str, Any] | None:
        return next((r for r in self.vm_resources() if int(r["vmid"]) == int(vmid)), None)

    def next_vmid(self, exclude: Iterable[int] = ()) -> int:
        """``cluster/nextid`` (not a reservation), skipping ids this process already uses."""
        skip = set(int(v) for v in exclude)
        vmid = int(self.get("cluster/nextid"))
        while vmid in skip:
            vmid += 1
            try:
                vmid = int(self.get("cluster/nextid", vmid=vmid))
            except ProxmoxError as exc:
                if exc.status != 400:
                    raise
                skip.add(vmid)  # exists already: try the next one
        return vmid

    # -- VMs -------------------------------------------------------------------------------
    def vm_config(self, node: str, vmid: int, *, current: bool = False) -> dict[str, Any]:
        return self.get(f"nodes/{node}/qemu/{vmid}/config", current=current or None)

    def vm_status(self, node: str, vmid: int) -> dict[str, Any]:
        return self.get(f"nodes/{node}/qemu/{vmid}/status/current")

    def clone(self, node: str, vmid: int, newid: int, *, name: str | None = None, full: bool | None = None,
              description: str | None = None, storage: str | None = None, pool: str | None = None,
              target: str | None = None) -> str:
        """POST .../clone -> UPID. Not retried unless provably never sent (see module doc)."""
        upid = self.post(f"nodes/{node}/qemu/{vmid}/clone", newid=newid, name=name, full=full,
                         description=description, storage=storage, pool=pool, target=target)
        return str(upid)

    def set_config(self, node: str, vmid: int, **values: Any) -> None:
        """Synchronous PUT .../config with absolute values (idempotent, so retried)."""
        if isinstance(values.get("sshkeys"), (list, tuple)) or (
                isinstance(values.get("sshkeys"), str) and not _is_urlencoded(values["sshkeys"])):
            values["sshkeys"] = encode_sshkeys(values["sshkeys"])
        self.put(f"nodes/{node}/qemu/{vmid}/config", idempotent=True, **values)

    def resize(self, node: str, vmid: int, disk: str, size: str) -> str | None:
        """PUT .../resize (UPID since PVE 8.0, null before). ``+1G`` is relative: not retried."""
        result = self.put(f"nodes/{node}/qemu/{vmid}/resize", idempotent=not size.startswith("+"),
                          disk=disk, size=size)
        return str(result) if result else None

    def start(self, node: str, vmid: int) -> str:
        return str(self.post(f"nodes/{node}/qemu/{vmid}/status/start"))

    def stop(self, node: str, vmid: int) -> str:
        """Hard stop (like pulling the plug); stopping twice is harmless, so retried."""
        return str(self.post(f"nodes/{node}/qemu/{vmid}/status/stop", idempotent=True))

    def destroy(self, node: str, vmid: int) -> str:
        """DELETE .../qemu/{vmid} (purge, with unreferenced disks) -> the UPID of the destroy task.

        Not retried blindly (see the module doc): after an answer that leaves open whether PVE
        started the task, :meth:`destroy_task` looks for it first; the DELETE is repeated only
        while the VM exists and no destroy of it runs. An error of a repeated DELETE ("does not
        exist", "VM is locked") is looked into the same way before it is raised.
        """
        path = f"nodes/{node}/qemu/{vmid}"
        params = {"purge": True, "destroy-unreferenced-disks": True}
        unsure = False
        attempt = 0
        while True:
            attempt += 1
            try:
                return str(self.call("DELETE", path, params, idempotent=False))
            except OutcomeUnknown as exc:
                unsure, error = True, exc
            except ProxmoxError as exc:
                if not unsure:
                    raise
                error = exc  # an earlier DELETE may have started a destroy: this one's error may be its doing
            upid = self.destroy_task(node, vmid)
            if upid is not None:
                log.warning("DELETE /%s: %s; the destroy runs (or ran) as %s: waiting for that task", path,
                            _short(error), upid)
                return upid
            if attempt >= self.retry.attempts:
                raise error
            self._backoff("DELETE", path, f"{_short(error)}; VM {vmid} still exists and no destroy of it runs",
                          attempt)

    def destroy_task(self, node: str, vmid: int) -> str | None:
        """After a DELETE whose answer was lost: the UPID of a running destroy of ``vmid``; or, when
        the VM is gone, of the newest destroy task of it (the one that removed it); None when the
        VM still exists and no destroy of it runs (nothing was started: safe to send it again)."""
        tasks = self.get(f"nodes/{node}/tasks", vmid=vmid, typefilter="qmdestroy", source="all", limit=50) or []
        tasks = sorted(tasks, key=lambda t: int(t.get("starttime") or 0), reverse=True)
        running = [t for t in tasks if t.get("endtime") is None]
        if running:
            return str(running[0]["upid"])
        if self.find_vm(vmid) is not None:
            return None
        if tasks:
            return str(tasks[0]["upid"])
        raise ProxmoxError(f"VM {vmid} no longer exists, but no destroy task of it is listed on {node}: "
                           f"removed by another client?")

    def agent(self, node: str, vmid: int, command: str) -> Any:
        """A guest-agent command; returns the QGA result (``{"result": X}`` unwrapped)."""
        method = "POST" if command in AGENT_POST_COMMANDS else "GET"
        # ping and fsfreeze-status are POSTs that change nothing: safe to retry.
        idempotent = method == "GET" or command in ("ping", "fsfreeze-status")
        answer = self.call(method, f"nodes/{node}/qemu/{vmid}/agent/{command}", {}, idempotent=idempotent)
        return answer.get("result") if isinstance(answer, dict) and "result" in answer else answer

    def wait_unlocked(self, node: str, vmid: int, timeout: float, *, interval: float = 1.0,
                      cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Poll the config until it has no ``lock``; ProxmoxError naming the lock on timeout."""
        deadline = self.clock() + timeout
        while True:
            config = self.vm_config(node, vmid)
            lock = config.get("lock")
            if not lock:
                return config
            if self.clock() >= deadline:
                raise ProxmoxError(
                    f"VM {vmid} is still locked ({lock}) after {timeout:.0f}s: a task holds it or a crashed "
                    f"task left the lock behind; check the node's task log, then `qm unlock {vmid}` if nothing "
                    f"is running", status=None)
            if cancel is not None and cancel():
                raise ProxmoxError(f"stopped waiting for the lock on VM {vmid} (cancelled)")
            self.sleep(min(interval, max(0.0, deadline - self.clock())))

def _is_urlencoded(text: str) -> bool:
    return re.fullmatch(r"[-%a-zA-Z0-9_.!~*'()]*", text) is not None and "%" in text

def _short(exc: BaseException) -> str:
    text = str(exc)
    m = re.search(r"\(Caused by (\w+)\((.*)\)\)\s*$", text)
    if m:
        text = f"{m.group(1)}: {m.group(2)}"
    return text[:300]

def permission_message(content: str, authid: str, method: str, path: str) -> str:
    """Name the missing privilege and path from ``Permission check failed (/vms/9004, VM.Clone)``."""
    m = PERMISSION_RE.search(content or "")
    who = authid or "the API user"
    if m and m.group("path"):
        privs = m.group("privs").strip()
        what = (f"one of {', '.join(privs.split('|'))}" if "|" in privs else privs)
        hint = (" (for a privilege-separated token, both the user and the token need it)"
                if "!" in (authid or "") else "")
        return (f"permission denied: {who} lacks {what} on {m.group('path').strip()}{hint}; "
                f"grant it with `pveum acl modify {m.group('path').strip()} --roles <role with {privs}> "
                f"--{'tokens' if '!' in (authid or '') else 'users'} {who}` (PVE: {content.strip()} "
                f"on {method} /{path})")
    return f"permission denied for {who} on {method} /{path} (PVE: {(content or 'Permission check failed').strip()})"
