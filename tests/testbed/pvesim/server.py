"""HTTPS front end: ``/api2/json`` like pveproxy, ``/_sim`` control API.

Request flow (pve-http-server AnyEvent.pm + pve-manager HTTPServer.pm):
authenticate (401, delayed like PVE) -> find the handler (501 ``Method 'GET
/x' not implemented``, logged) -> faults -> merge URI/query/body params ->
permission check from the schema (403) -> schema validation (400) -> handler
(500 with PVE's message in the reason phrase and in ``{"data":null,"message"}``).
"""
from __future__ import annotations

import collections
import json
import logging
import mmap
import re
import socket
import ssl
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, unquote, urlsplit

from .auth import Identity, extract_cookie_ticket
from .errors import ApiError, die, param_error, unauthorized
from .faults import FiredFaults
from .node import Node
from .router import Ctx, Handler
from .schema import Endpoint, Schema
from .tasks import REQUEST_FAULTS

log = logging.getLogger(__name__)
access_log = logging.getLogger("pvesim.access")

MAX_FORM = 16 * 1024 * 1024


def normalize_legacy_params(ep: Endpoint, params: dict[str, Any]) -> None:
    """pve-common RESTHandler.pm:485-508 $normalize_legacy_param_formats, before validation.

    A repeated form key arrives as an array (AnyEvent.pm:908-915 decode_urlencoded): joined
    with ',' for a ``*-list`` string format, else left for validation to refuse (``type
    check ('string') failed - got ARRAY``); a scalar for an ``array`` parameter is wrapped.
    """
    for key, value in params.items():
        prop = ep.prop(key)
        if prop is None or value in (None, "", "0"):  # Perl: next if !$value
            continue
        fmt = prop.get("format")
        if isinstance(value, list) and prop.get("type") == "string" and isinstance(fmt, str) \
                and fmt.endswith("-list"):
            params[key] = ",".join(map(str, value))
        elif not isinstance(value, list) and prop.get("type") == "array":
            params[key] = [value]


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, node: Node, schema: Schema, handlers: dict[tuple[str, str], Handler],
                 ssl_ctx: ssl.SSLContext, on_shutdown_request: Callable[[], None] | None = None) -> None:
        self.node = node
        self.schema = schema
        self.handlers = handlers
        self.ssl_ctx = ssl_ctx
        self.on_shutdown_request = on_shutdown_request
        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=5000)
        self.unimplemented: list[dict[str, Any]] = []
        self._seq = 0
        self._seq_lock = threading.Lock()
        self.routes: list[tuple[Endpoint, re.Pattern[str]]] = []
        for (method, template), ep in schema.endpoints.items():
            rx = ep.regex
            if "{volume}" in template:  # volume ids contain '/'
                rx = re.compile(ep.regex.pattern.replace("(?P<volume>[^/]+)", "(?P<volume>.+)"))
            self.routes.append((ep, rx))
        super().__init__((node.cfg.listen, node.cfg.port), RequestHandler)

    def finish_request(self, request: socket.socket, client_address: Any) -> None:  # type: ignore[override]
        request.settimeout(15)
        try:
            tls = self.ssl_ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake with %s failed: %s", client_address, exc)
            return
        tls.settimeout(120)
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def record(self, entry: dict[str, Any]) -> None:
        with self._seq_lock:
            self._seq += 1
            entry["seq"] = self._seq
            self.requests.append(entry)

    def match(self, method: str, rel: str) -> tuple[Endpoint | None, dict[str, str]]:
        for ep, rx in self.routes:
            if ep.method != method:
                continue
            m = rx.match(rel)
            if m:
                return ep, m.groupdict()
        return None, {}


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pve-api-daemon/3.0"
    sys_version = ""
    server: ApiServer

    def log_message(self, fmt: str, *args: Any) -> None:  # silence http.server's stderr log
        pass

    def do_GET(self) -> None:
        self.dispatch("GET")

    def do_POST(self) -> None:
        self.dispatch("POST")

    def do_PUT(self) -> None:
        self.dispatch("PUT")

    def do_DELETE(self) -> None:
        self.dispatch("DELETE")

    def _unknown_method(self) -> None:  # pve-http-server: only GET/POST/PUT/DELETE exist
        self.send_json(501, f"method '{self.command}' not available", None, close=True)

    do_HEAD = do_PATCH = do_OPTIONS = _unknown_method

    # ----------------------------------------------------------- responses
    def send_json(self, status: int, reason: str, body: Any | None, close: bool = False,
                  headers: dict[str, str] | None = None) -> None:
        reason = (reason.strip().split("\n", 1)[0] or "Error").encode("latin-1", "replace").decode("latin-1")
        raw = b"" if body is None else json.dumps(body).encode()
        self.send_response(status, reason)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Cache-Control", "max-age=0")
        self.send_header("Pragma", "no-cache")
        self.send_header("Expires", self.date_time_string())
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if close or status >= 300:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if raw and self.command != "HEAD":
            self.wfile.write(raw)

    def send_error_obj(self, err: ApiError) -> None:
        body: dict[str, Any] | None = None
        if err.body:
            body = {"data": None}
            if err.errors:
                body["errors"] = err.errors
            body["message"] = err.message if err.message.endswith("\n") else err.message + "\n"
        self.send_json(err.status, err.message, body, close=True, headers=err.headers)

    # ----------------------------------------------------------- body parsing
    def read_params(self) -> tuple[dict[str, Any], dict[str, Path]]:
        length = int(self.headers.get("Content-Length") or 0)
        ctype = self.headers.get("Content-Type", "")
        files: dict[str, Path] = {}
        if not length:
            return {}, files
        if self.command not in ("POST", "PUT"):
            self.rfile.read(length)
            raise ApiError(501, f"Unexpected content for method '{self.command}'")
        if ctype.startswith("multipart/form-data"):
            return self.read_multipart(length, ctype)
        if length > MAX_FORM:
            raise ApiError(501, "for data too large")
        raw = self.rfile.read(length)
        if ctype.startswith("application/json"):
            data = json.loads(raw or b"{}")
            if not isinstance(data, dict):
                raise param_error({"_root": "JSON body must be an object"})
            return {k: v for k, v in data.items()}, files
        return self.form(raw.decode("utf-8", "replace")), files

    @staticmethod
    def form(text: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in parse_qsl(text, keep_blank_values=True):
            if key in out:
                prev = out[key]
                out[key] = prev + [value] if isinstance(prev, list) else [prev, value]
            else:
                out[key] = value
        return out

    def read_multipart(self, length: int, ctype: str) -> tuple[dict[str, Any], dict[str, Path]]:
        m = re.search(r'boundary="?([^";]+)"?', ctype)
        if not m:
            raise ApiError(501, "upload without boundary")
        boundary = b"--" + m.group(1).encode()
        tmpdir = self.server.node.state / "upload"
        tmpdir.mkdir(exist_ok=True)
        params: dict[str, Any] = {}
        files: dict[str, Path] = {}
        with tempfile.TemporaryFile(dir=tmpdir) as body:
            remaining = length
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                body.write(chunk)
                remaining -= len(chunk)
            body.flush()
            if body.tell() == 0:
                return params, files
            with mmap.mmap(body.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                pos = mm.find(boundary)
                while pos >= 0:
                    start = pos + len(boundary)
                    if mm[start:start + 2] == b"--":
                        break
                    header_end = mm.find(b"\r\n\r\n", start)
                    if header_end < 0:
                        break
                    headers = mm[start:header_end].decode("utf-8", "replace")
                    data_start = header_end + 4
                    nxt = mm.find(b"\r\n" + boundary, data_start)
                    if nxt < 0:
                        break
                    name_m = re.search(r'name="([^"]*)"', headers)
                    file_m = re.search(r'filename="([^"]*)"', headers)
                    name = name_m.group(1) if name_m else ""
                    if file_m and name == "filename":
                        dest = Path(tempfile.mkstemp(prefix="pveupload-", dir=tmpdir)[1])
                        with dest.open("wb") as out:
                            offset = data_start
                            while offset < nxt:
                                end = min(nxt, offset + (1 << 22))
                                out.write(mm[offset:end])
                                offset = end
                        files["filename"] = dest
                        params.setdefault("filename", file_m.group(1))
                    elif name:
                        params[name] = mm[data_start:nxt].decode("utf-8", "replace")
                    pos = nxt + 2
        return params, files

    # ----------------------------------------------------------- dispatch
    def dispatch(self, method: str) -> None:
        started = time.monotonic()
        url = urlsplit(self.path)
        path = unquote(url.path)
        entry: dict[str, Any] = {"method": method, "path": path, "time": time.time()}
        status = 500
        try:
            if path.startswith("/_sim/") or path == "/_sim":
                status = self.control(method, path, url.query)
                return
            status = self.api(method, path, url.query, entry)
        except ApiError as err:
            status = err.status
            entry["error"] = err.message.strip()
            self.send_error_obj(err)
        except (BrokenPipeError, ConnectionResetError):
            status = 499
        except Exception as exc:  # a simulator bug: answer like PVE's generic 500
            log.exception("internal error handling %s %s", method, path)
            status = 500
            entry["error"] = f"internal error: {exc}"
            self.send_error_obj(ApiError(500, f"{exc}\n"))
        finally:
            entry["status"] = status
            entry["ms"] = int((time.monotonic() - started) * 1000)
            if not path.startswith("/_sim"):
                self.server.record(entry)
                access_log.info("%s %s %s %s %dms", entry.get("user", "-"), method, path, status, entry["ms"])

    def authenticate(self, method: str, rel: str, entry: dict[str, Any]) -> Identity | None:
        node = self.server.node
        if (rel == "/access/ticket" and method in ("GET", "POST")) or (rel == "/access/domains" and method == "GET"):
            return None
        auth_header = self.headers.get("Authorization")
        ticket = extract_cookie_ticket(self.headers.get("Cookie"), auth_header)
        try:
            if ticket:
                ident = Identity(self.verified(node.access.verify_ticket, ticket), "ticket", ticket)
                is_upload = method == "POST" and re.fullmatch(r"/nodes/[^/]+/storage/[^/]+/upload", rel) is not None
                if method != "GET" and not is_upload:
                    node.access.verify_csrf(ident.authid, self.headers.get("CSRFPreventionToken"))
            elif auth_header and "PVEAPIToken" in auth_header:
                ident = self.verified(node.access.verify_token_header, auth_header)
            else:
                raise unauthorized("No ticket")
        except ApiError as err:
            entry["error"] = err.message
            time.sleep(node.cfg.unauth_delay)
            raise
        entry["user"] = ident.authid
        return ident

    @staticmethod
    def verified(check: Callable[[str], Any], credential: str) -> Any:
        """pve-manager HTTPServer.pm:87-91/100-103: the reason is only logged
        ("authentication failure: ..."), the client gets 401 "Authentication failed!"."""
        try:
            return check(credential)
        except ApiError as err:
            log.info("authentication failure: %s", err.message.strip())
            raise unauthorized("Authentication failed!") from None

    def api(self, method: str, path: str, query: str, entry: dict[str, Any]) -> int:
        srv = self.server
        node = srv.node
        m = re.match(r"^/api2/([a-z]+)(/.*)?$", path)
        if not m:
            self.drain()
            raise ApiError(501, f"no such file '{path}'")
        fmt, rel = m.group(1), (m.group(2) or "/").rstrip("/") or "/"
        if fmt != "json":
            self.drain()
            raise ApiError(501, "no such uri" if fmt not in ("extjs", "html", "text", "png", "htmljs")
                           else f"format '{fmt}' is not supported by the simulator")
        ident = self.authenticate(method, rel, entry)
        body_params, files = self.read_params()
        ep, uri_params = srv.match(method, rel)
        handler = srv.handlers.get((method, ep.path)) if ep else None
        if ep is None or handler is None:
            in_pve = srv.schema.in_pve(method, rel)
            info = {"method": method, "path": rel, "in_pve_9_1": in_pve, "time": time.time(),
                    "params": sorted(body_params) + sorted(k for k, _ in parse_qsl(query))}
            srv.unimplemented.append(info)
            log.warning("NOT IMPLEMENTED: %s %s (exists in PVE 9.1: %s, params: %s)", method, rel, in_pve,
                        ", ".join(info["params"]) or "-")
            raise ApiError(501, f"Method '{method} {rel}' not implemented")
        fired = node.faults.on_call(method, rel)
        for fault in fired.faults:
            if fault.action == "delay" and fault.seconds:
                time.sleep(fault.seconds)
        fail = fired.get("fail")
        if fail is not None:
            msg = fail.message or "simulated failure"
            raise ApiError(int(fail.status), msg if msg.endswith("\n") else msg + "\n", errors=fail.errors)
        params = {**body_params, **self.form(query)}  # AnyEvent.pm:940-944: the query string wins
        # pve-manager PVE/HTTPServer.pm:160-167: a parameter also in the URI must have the same value
        # (Telmate's proxmox-api-go repeats ``storage`` in download-url's body)
        for key in sorted(params):
            if key in uri_params and str(params[key]) != str(uri_params[key]):
                raise param_error({key: "duplicate parameter (already defined in URI) with conflicting values!"})
        params.update(uri_params)
        params.pop("_dc", None)
        normalize_legacy_params(ep, params)
        if ident is not None:
            if ident.via == "token" and not ep.allowtoken:
                raise ApiError(403, f"URI '{rel}' not available with API token, need proper ticket.\n")
            node.access.check_api2_permissions(ep.permissions, ident, params)
        srv.schema.validate(ep, params)
        if "node" in params and params["node"] != node.name:
            raise die(f"hostname lookup '{params['node']}' failed - failed to get address info for: "
                      f"{params['node']}: Name or service not known")
        coerced = srv.schema.coerce(ep, params)
        self.apply_take_vmid(fired, ep, coerced)
        ctx = Ctx(node=node, ident=ident or Identity("", "none"), endpoint=ep, fired=fired, method=method,
                  path=rel, files=files)
        token = REQUEST_FAULTS.set(fired)
        try:
            result = handler(ctx, coerced)
        finally:
            REQUEST_FAULTS.reset(token)
        body: dict[str, Any] = {"data": result}
        body.update(ctx.extra)
        late = fired.get("delay_answer")
        if late is not None and late.seconds:
            time.sleep(late.seconds)  # done, but the answer comes late (the client may have given up)
        self.send_json(200, "OK", body)
        return 200

    def apply_take_vmid(self, fired: FiredFaults, ep: Endpoint, params: dict[str, Any]) -> None:
        fault = fired.get("take_vmid")
        if fault is None:
            return
        vmid = params.get("newid") if ep.path.endswith("/clone") else params.get("vmid")
        if vmid is not None and not self.server.node.exists(int(vmid)):
            self.server.node.write_raw(int(vmid), "#taken by another client (simulated nextid race)\nname: other-client\n")
            log.info("fault %s: VM %s taken by another client", fault.id, vmid)

    def drain(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)

    # ----------------------------------------------------------- control API
    def control(self, method: str, path: str, query: str) -> int:
        from .control import handle_control

        status, body = handle_control(self.server, method, path, query, self.headers, self.rfile)
        self.send_json(status, "OK" if status == 200 else "Error", body)
        return status
