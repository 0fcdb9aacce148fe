"""nixgold.proxmox: encoding rules against the PVE 9.1 schema fixture, and behaviour (tasks, auth,
retries, the vmid race, locks) against the simulator on the test bed. No guest OS boots here.

Encoding tests record what the client hands to proxmoxer and validate it exactly as PVE's
JSONSchema would after form encoding (``tests/testbed/pvesim/schema.py``); behaviour tests use
the simulator's fault injection and its request log to count what really went over the wire.
"""
from __future__ import annotations

import logging
import re
import threading
import time
import urllib.parse
from typing import Any, Callable

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from nixgold.config.credentials import Credentials
from nixgold.errors import ProxmoxError, ProxmoxTaskError
from nixgold.proxmox.vms import CloneJob, run_clone
from nixgold.proxmox.client import (
    OutcomeUnknown,
    ProxmoxClient,
    RetryPolicy,
    encode_params,
    encode_sshkeys,
    parse_upid,
    permission_message,
    task_succeeded,
)
from nixgold.proxmox.agent import agent_addresses
from tests.helpers.check_stubs import start_checks_with
from tests.helpers.pve import bed_creds, wait_for_clone_lock
from tests.testbed.pvesim.errors import ApiError
from tests.testbed.pvesim.schema import load_schema

TEMPLATE = 9004
FAST = RetryPolicy(attempts=4, base=0.01, cap=0.05)
PVE_URLENCODED = re.compile(r"^[-%a-zA-Z0-9_.!~*'()]*$")
UPID = "UPID:pve2:0000ABCD:00001234:6720A1B2:qmclone:9004:nixgold@pve!testbed:"


# --------------------------------------------------------------------------- helpers
def public_key(comment: str = "") -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}".rstrip()


def form_values(params: dict[str, Any]) -> dict[str, Any]:
    """What PVE's parser sees after requests form-encodes proxmoxer's data (str() of each value)."""
    encoded = urllib.parse.urlencode(params, doseq=True)
    out: dict[str, Any] = {}
    for key, value in urllib.parse.parse_qsl(encoded, keep_blank_values=True):
        out[key] = [*out[key], value] if isinstance(out.get(key), list) else ([out[key], value] if key in out else value)
    return out


def schema_validate(method: str, path: str, params: dict[str, Any]) -> None:
    """Validate one call as PVE 9.1 would (raises the simulator's ApiError 400 like PVE)."""
    schema = load_schema()
    for (m, _tmpl), ep in schema.endpoints.items():
        match = ep.regex.match("/" + path.strip("/"))
        if m == method and match:
            values = {**form_values(params), **match.groupdict()}
            for key, value in list(values.items()):
                if (ep.prop(key) or {}).get("type") == "array" and isinstance(value, str):
                    values[key] = [value]
            schema.validate(ep, values)
            return
    raise AssertionError(f"{method} /{path} is not in the PVE 9.1 schema")


class Recorder:
    """Stands in for a ProxmoxAPI: records (method, path, params) and answers from ``answer``."""

    def __init__(self, answer: Callable[[str, str, dict[str, Any]], Any] = lambda m, p, d: None):
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.answer = answer

    def __call__(self, path: str) -> "_Resource":
        return _Resource(self, path)


class _Resource:
    def __init__(self, rec: Recorder, path: str):
        self.rec, self.path = rec, path

    def _do(self, method: str, params: dict[str, Any]) -> Any:
        self.rec.calls.append((method, self.path, dict(params)))
        return self.rec.answer(method, self.path, params)

    def get(self, **p: Any) -> Any:
        return self._do("GET", p)

    def post(self, **p: Any) -> Any:
        return self._do("POST", p)

    def put(self, **p: Any) -> Any:
        return self._do("PUT", p)

    def delete(self, **p: Any) -> Any:
        return self._do("DELETE", p)


def fake_client(answer: Callable[[str, str, dict[str, Any]], Any] = lambda m, p, d: None, **kw: Any
                ) -> tuple[ProxmoxClient, Recorder]:
    rec = Recorder(answer)
    creds = Credentials(url="https://pve.example:8006/api2/json", token_id="nixgold@pve!t", token_secret="s3cret")
    kw.setdefault("retry", FAST)
    return ProxmoxClient(creds, api=rec, sleep=lambda s: None, **kw), rec


def calls_since(testbed: Any, seq: int, method: str, pattern: str) -> list[dict[str, Any]]:
    return [r for r in testbed.sim_admin.requests_log(since=seq)
            if r["method"] == method and re.fullmatch(pattern, r["path"])]


def last_seq(testbed: Any) -> int:
    log = testbed.sim_admin.requests_log()
    return log[-1]["seq"] if log else 0


@pytest.fixture
def client(testbed):
    with testbed.enter():
        yield ProxmoxClient(bed_creds(testbed), timeout=30, retry=FAST)


@pytest.fixture(autouse=True)
def _no_faults_left(request):
    yield
    if "testbed" in request.fixturenames:
        bed = request.getfixturevalue("testbed")
        with bed.enter():
            bed.sim_admin.clear_faults()


def destroy(client: ProxmoxClient, *vmids: int | None) -> None:
    for vmid in vmids:
        if vmid is not None and client.find_vm(vmid) is not None:
            client.wait_task(client.destroy("pve", vmid), 60)


# ------------------------------------------------------------------- encoding rules (schema)
def test_python_true_is_rejected_by_the_schema_and_the_client_sends_1_0():
    with pytest.raises(ApiError) as info:
        schema_validate("POST", "nodes/pve/qemu/9004/clone", {"newid": 120, "full": True})
    assert info.value.status == 400 and info.value.errors == {"full": "type check ('boolean') failed - got 'True'"}

    client, rec = fake_client(lambda m, p, d: UPID)
    client.clone("pve", 9004, 120, name="t-verify-1", full=True, description="by nixgold")
    client.clone("pve", 9004, 121, full=False)
    client.destroy("pve", 120)
    client.set_config("pve", 120, ciupgrade=False, ciuser="nixgold", ipconfig0="ip=dhcp", sshkeys=[public_key("c")],
                      nameserver=None, tags="nixgold-verify")
    (m1, p1, d1), (_, _, d2), (m3, p3, d3), (m4, p4, d4) = rec.calls
    assert d1["full"] == 1 and d2["full"] == 0 and "storage" not in d1  # None dropped
    assert d3 == {"purge": 1, "destroy-unreferenced-disks": 1}  # hyphenated key passes through as is
    assert d4["ciupgrade"] == 0 and "nameserver" not in d4
    for method, path, data in rec.calls:
        assert not any(isinstance(v, bool) for v in data.values())
        schema_validate(method, path, data)


def test_the_simulator_rejects_true_and_accepts_what_the_client_sends(testbed, client):
    job = run_clone(client, CloneJob("pve", TEMPLATE, "bools", full=False), timeout=60)
    raw = testbed.proxmoxer()  # plain proxmoxer passes Python's True through as the string "True"
    from proxmoxer import ResourceException

    with pytest.raises(ResourceException) as info:
        raw.nodes("pve").qemu(job.vmid).delete(purge=True)
    assert info.value.status_code == 400
    assert info.value.errors == {"purge": "type check ('boolean') failed - got 'True'"}
    client.set_config("pve", job.vmid, ciupgrade=False, sshkeys=[public_key("a b+c=d")])
    config = client.vm_config("pve", job.vmid)
    assert config["ciupgrade"] == 0 and urllib.parse.unquote(config["sshkeys"]).endswith(" a b+c=d\n")
    client.wait_task(client.destroy("pve", job.vmid), 60)  # purge=1, destroy-unreferenced-disks=1
    assert client.find_vm(job.vmid) is None


def test_encode_params_keeps_lists_and_converts_nested_booleans():
    assert encode_params({"a": True, "b": None, "c": [True, "x"], "d": 0}) == {"a": 1, "c": [1, "x"], "d": 0}


@settings(max_examples=60, deadline=None)
@given(comments=st.lists(st.text(alphabet=st.sampled_from(list("ab +=/%&:;\"'#@!~*()éß") + ["\t"]), max_size=24),
                         min_size=1, max_size=3))
def test_sshkeys_are_percent_encoded_for_pve(comments):
    keys = [public_key(c.replace("\t", " ").strip()) for c in comments]
    encoded = encode_sshkeys(keys)
    assert PVE_URLENCODED.fullmatch(encoded), encoded  # pve-common's urlencoded format
    assert "+" not in encoded and " " not in encoded  # quote(safe=""), never quote_plus
    assert urllib.parse.unquote(encoded) == "\n".join(keys) + "\n"
    schema_validate("PUT", "nodes/pve/qemu/120/config", {"sshkeys": encoded})
    # and the raw text is rejected by the schema, as PVE does ("invalid urlencoded string")
    with pytest.raises(ApiError):
        schema_validate("PUT", "nodes/pve/qemu/120/config", {"sshkeys": "\n".join(keys)})


def test_sshkeys_given_as_text_are_encoded_once():
    key = public_key("me+you=us")
    client, rec = fake_client()
    client.set_config("pve", 120, sshkeys=key + "\n")
    client.set_config("pve", 121, sshkeys=encode_sshkeys([key]))  # already encoded: left alone
    assert rec.calls[0][2]["sshkeys"] == rec.calls[1][2]["sshkeys"] == encode_sshkeys([key])


def api_side_checks() -> Callable[..., Any]:
    """A run_checks that runs only the checks that talk to Proxmox, not to the guest over SSH (the
    check functions taking ``ctx`` and ``clone``: agent ping, get-osinfo, get-host-name)."""
    import importlib
    import inspect
    import pkgutil

    import nixgold.verify.checks as suite

    functions = []
    for info in pkgutil.iter_modules(suite.__path__):
        if info.name.startswith("test_"):
            module = importlib.import_module(f"{suite.__name__}.{info.name}")
            functions += [fn for name, fn in vars(module).items() if name.startswith("test_") and callable(fn)
                          and set(inspect.signature(fn).parameters) == {"ctx", "clone"}]
    assert functions

    def run_checks(ctx: Any, extra_dirs: Any = (), *, scope: str = "all", **kw: Any) -> Any:
        """The agent's answers come from the verifier's own API calls (ctx.agent: AgentAnswers)."""
        results = []
        for fn in functions if scope != "cross" else ():
            for clone in ctx.clones:
                try:
                    fn(ctx, clone)
                    outcome, reason = "passed", ""
                except AssertionError as exc:
                    outcome, reason = "failed", str(exc)
                results.append(suite.CheckResult(id=fn.__name__, target=clone.name, outcome=outcome, seconds=0.0,
                                                 reason=reason, summary=fn.__name__))
        return suite.CheckRun(results, [fn.__name__ for fn in functions])

    return run_checks


@pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning")  # the suite's own marks
def test_every_call_verify_makes_is_in_the_pve_schema(testbed, monkeypatch, tmp_path):
    """The calls of two real verify runs at once (two threads of one process: the library is safe to
    call from threads; one clone of the bed's template booted by each, the API-side checks),
    recorded at ProxmoxClient.call and each validated against the PVE 9.1 schema as PVE would."""
    import io
    import threading

    import nixgold.verify.checks as suite
    from nixgold.config.load import load_config
    from nixgold.progress import Progress
    from nixgold.verify.verifier import VerifyOptions, run_verify

    monkeypatch.setattr(suite, "start_checks", start_checks_with(api_side_checks()))
    config = load_config(testbed.config_path, env={}, overrides={
        "verify.clones": 1, "verify.profile": "generic", "verify.agent_timeout": "10m", "verify.ssh_timeout": "5m"})
    recorded: list[tuple[str, str, dict[str, Any]]] = []
    reports: dict[int, Any] = {}
    errors: list[BaseException] = []

    def one_verify(n: int) -> None:
        try:
            with testbed.enter():  # this thread (and the verifier's workers it starts) in the namespace
                client = ProxmoxClient(bed_creds(testbed), retry=FAST)
                real_call = client.call

                def call(method: str, path: str, params: Any = None, *, idempotent: bool) -> Any:
                    recorded.append((method, path.strip("/"), encode_params(params or {})))
                    return real_call(method, path, params, idempotent=idempotent)

                client.call = call  # type: ignore[method-assign]
                reports[n] = run_verify(config, bed_creds(testbed), VerifyOptions(vmid=TEMPLATE),
                                        progress=Progress(stream=io.StringIO()), out=io.StringIO(), client=client)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=one_verify, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for report in reports.values():
        assert report.exit_code == 0, [(r.id, r.outcome, r.reason) for r in report.results]
    clones = [c.vmid for report in reports.values() for c in report.clones]
    assert len(set(clones)) == 2  # each run its own clone, both destroyed
    with testbed.enter():
        assert not {int(vm["vmid"]) for vm in testbed.all_vms()} & set(clones)
    for method, path, params in recorded:
        schema_validate(method, path, params)
    shapes = {(m, re.sub(r"UPID:[^/]+", "{upid}", re.sub(r"/\d+(?=/|$)", "/{vmid}", p))) for m, p, _ in recorded}
    for stage in [("POST", "nodes/pve/qemu/{vmid}/clone"), ("PUT", "nodes/pve/qemu/{vmid}/config"),
                  ("PUT", "nodes/pve/qemu/{vmid}/resize"), ("POST", "nodes/pve/qemu/{vmid}/status/start"),
                  ("POST", "nodes/pve/qemu/{vmid}/agent/ping"), ("GET", "nodes/pve/qemu/{vmid}/agent/network-get-interfaces"),
                  ("GET", "nodes/pve/qemu/{vmid}/agent/get-osinfo"), ("GET", "nodes/pve/qemu/{vmid}/agent/get-host-name"),
                  ("POST", "nodes/pve/qemu/{vmid}/status/stop"), ("DELETE", "nodes/pve/qemu/{vmid}"),
                  ("GET", "nodes/pve/tasks/{upid}/status")]:
        assert stage in shapes, (stage, sorted(shapes))


# ---------------------------------------------------------------------------- UPIDs and tasks
def test_upid_parsing_and_task_status_rules():
    u = parse_upid(UPID)
    assert (u.node, u.type, u.id, u.user) == ("pve2", "qmclone", "9004", "nixgold@pve!testbed")
    with pytest.raises(ProxmoxError, match="not a task id"):
        parse_upid("UPID:pve:bad")
    assert task_succeeded("OK") and task_succeeded("WARNINGS: 3")
    for bad in (None, "", "WARNINGS: some", "clone failed: x", "interrupted by signal", "unexpected status"):
        assert not task_succeeded(bad)


def test_wait_task_polls_the_node_in_the_upid_and_accepts_warnings():
    polls = iter([{"status": "running"}, {"status": "running"}, {"status": "stopped", "exitstatus": "WARNINGS: 2"}])
    client, rec = fake_client(lambda m, p, d: next(polls))
    assert client.wait_task(UPID, 60)["exitstatus"] == "WARNINGS: 2"
    assert {p for _, p, _ in rec.calls} == {f"nodes/pve2/tasks/{UPID}/status"}


def test_wait_task_raises_with_the_log_tail_and_on_timeout():
    def answer(m: str, p: str, d: dict[str, Any]) -> Any:
        if p.endswith("/log"):
            return [{"n": i, "t": f"line {i}"} for i in range(1, 41)] + [{"n": 41, "t": "TASK ERROR: boom"}]
        return {"status": "stopped", "exitstatus": "boom"}

    client, _ = fake_client(answer)
    with pytest.raises(ProxmoxTaskError) as info:
        client.wait_task(UPID, 60)
    assert info.value.exitstatus == "boom" and info.value.upid == UPID and not info.value.still_running
    assert len(info.value.log_tail) == 20 and info.value.log_tail[-1] == "TASK ERROR: boom"
    assert "task log:" in str(info.value)

    now = [0.0]
    client, _ = fake_client(lambda m, p, d: [] if p.endswith("/log") else {"status": "running"})
    client.clock = lambda: now[0]
    client.sleep = lambda s: now.__setitem__(0, now[0] + max(s, 0.1))
    with pytest.raises(ProxmoxTaskError, match=r"timeout after 5s \(task still running\)") as info:
        client.wait_task(UPID, 5)
    assert info.value.still_running
    with pytest.raises(ProxmoxTaskError, match=r"no longer waited for \(cancelled\)") as info:
        client.wait_task(UPID, 5, cancel=lambda: True)
    assert info.value.still_running


def test_tasks_on_the_simulator(testbed, client):
    sim = testbed.sim_admin
    job = run_clone(client, CloneJob("pve", TEMPLATE, "task-ok"), timeout=60)
    assert job.done and job.upid is None and client.find_vm(job.vmid)["name"] == "task-ok"

    sim.task_error("POST", "/nodes/*/qemu/*/clone", "clone failed: injected storage error")
    newid = client.next_vmid(exclude=[job.vmid])
    upid = client.clone("pve", TEMPLATE, newid, name="task-fails")
    with pytest.raises(ProxmoxTaskError) as info:
        client.wait_task(upid, 60)
    assert info.value.exitstatus == "clone failed: injected storage error"
    assert info.value.log_tail[-1] == "TASK ERROR: clone failed: injected storage error"
    assert client.find_vm(newid) is None

    sim.slow_task("POST", "/nodes/*/qemu/*/clone", seconds=3)
    upid = client.clone("pve", TEMPLATE, newid, name="task-slow")
    with pytest.raises(ProxmoxTaskError, match="timeout after 1s"):
        client.wait_task(upid, 1)
    assert client.wait_task(upid, 60)["exitstatus"] == "OK"
    destroy(client, job.vmid, newid)


# ----------------------------------------------------------------------------- auth and TLS
def test_401_names_the_token_variables(testbed):
    with testbed.enter():
        client = ProxmoxClient(bed_creds(testbed, token_secret="00000000-0000-0000-0000-000000000000"), retry=FAST)
        with pytest.raises(ProxmoxError) as info:
            client.version()
    assert info.value.status == 401 and info.value.exit_code == 6
    assert "authentication failed: check PROXMOX_TOKEN_ID/PROXMOX_TOKEN_SECRET" in str(info.value)
    assert "00000000-0000" not in str(info.value)


def test_password_login_is_the_fallback_and_its_failure_is_clear(testbed):
    with testbed.enter():
        creds = bed_creds(testbed, token_id=None, token_secret=None, username="nixgold@pve",
                          password=testbed.user_password)
        client = ProxmoxClient(creds, retry=FAST)
        assert client.vm_config("pve", TEMPLATE)["template"] == 1
        job = run_clone(client, CloneJob("pve", TEMPLATE, "ticket-clone"), timeout=60)  # POST needs CSRF
        destroy(client, job.vmid)
        with pytest.raises(ProxmoxError, match="check PROXMOX_USERNAME/PROXMOX_PASSWORD") as info:
            ProxmoxClient(bed_creds(testbed, token_id=None, token_secret=None, username="nixgold@pve",
                                    password="wrong"), retry=FAST)
    assert info.value.status == 401


def test_403_names_the_missing_privilege_and_path(testbed):
    with testbed.enter():
        secret = testbed.sim_admin.add_token("nixgold@pve!viewer", roles=["PVEAuditor"])
        client = ProxmoxClient(bed_creds(testbed, token_id="nixgold@pve!viewer", token_secret=secret), retry=FAST)
        assert client.vm_config("pve", TEMPLATE)["template"] == 1
        with pytest.raises(ProxmoxError) as info:
            client.clone("pve", TEMPLATE, 170)
    text = str(info.value)
    assert info.value.status == 403
    assert "nixgold@pve!viewer lacks VM.Clone on /vms/9004" in text
    assert "Permission check failed (/vms/9004, VM.Clone)" in text


def test_permission_message_with_alternatives():
    text = permission_message("Permission check failed (/vms/120, VM.Config.Disk|VM.Config.CDROM)", "u@pve", "PUT",
                              "nodes/pve/qemu/120/config")
    assert "u@pve lacks one of VM.Config.Disk, VM.Config.CDROM on /vms/120" in text
    assert "permission denied for u@pve" in permission_message("Permission check failed", "u@pve", "GET", "x")


def test_tls_is_verified_per_request_against_the_ca_bundle(testbed, monkeypatch, caplog):
    # requests lets $REQUESTS_CA_BUNDLE override a session-level verify, not a per-request one.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    with testbed.enter():
        assert ProxmoxClient(bed_creds(testbed), retry=FAST).version()["release"] == "9.1"
        with pytest.raises(ProxmoxError, match="TLS verification of .* failed .*PROXMOX_CA_BUNDLE"):
            ProxmoxClient(bed_creds(testbed, ca_bundle=None), retry=FAST).version()  # system store
        with caplog.at_level(logging.WARNING, logger="nixgold.proxmox"):
            insecure = ProxmoxClient(bed_creds(testbed, ca_bundle=None), insecure=True, retry=FAST)
            assert insecure.version()["release"] == "9.1"
    assert "TLS certificate verification is OFF" in caplog.text


def test_requests_never_log_bodies(testbed, caplog):
    key = public_key("very-secret-comment")
    with testbed.enter():
        creds = bed_creds(testbed, token_id=None, token_secret=None, username="nixgold@pve",
                          password=testbed.user_password)
        with caplog.at_level(logging.DEBUG):
            client = ProxmoxClient(creds, retry=FAST)
            logging.getLogger("proxmoxer.core").setLevel(logging.DEBUG)  # even if someone turns it on
            job = run_clone(client, CloneJob("pve", TEMPLATE, "no-log"), timeout=60)
            client.set_config("pve", job.vmid, sshkeys=[key], ciuser="nixgold")
            destroy(client, job.vmid)
    text = caplog.text
    assert testbed.user_password not in text and "very-secret-comment" not in text
    assert encode_sshkeys([key]) not in text and key.split()[1] not in text


# ------------------------------------------------------------------------------------ retries
def test_a_503_on_a_get_is_retried(testbed, client):
    sim = testbed.sim_admin
    sim.fail("GET", "/cluster/resources", status=503, message="injected: proxy busy", nth=2, times=2)
    seq = last_seq(testbed)
    client.vm_resources()
    assert any(vm["vmid"] == TEMPLATE for vm in client.vm_resources())
    statuses = [r["status"] for r in calls_since(testbed, seq, "GET", r"/api2/json/cluster/resources")]
    assert statuses == [200, 503, 503, 200] and client.retries == 2


def test_gets_give_up_after_the_policy(testbed, client):
    testbed.sim_admin.fail("GET", "/version", status=502, message="injected: bad gateway", times=0)
    with pytest.raises(ProxmoxError, match="502 injected: bad gateway") as info:
        client.version()
    assert info.value.status == 502 and client.retries == FAST.attempts - 1


@pytest.mark.parametrize("status", [500, 503])
def test_a_failed_clone_post_is_not_blindly_retried(testbed, client, status):
    testbed.sim_admin.fail("POST", "/nodes/*/qemu/*/clone", status=status, message="injected: storage offline")
    seq = last_seq(testbed)
    job = CloneJob("pve", TEMPLATE, "never")
    with pytest.raises(ProxmoxError, match="injected: storage offline") as info:
        run_clone(client, job, timeout=60)
    assert info.value.status == status and info.value.exit_code == 6
    assert len(calls_since(testbed, seq, "POST", r".*/clone")) == 1 and client.retries == 0
    assert job.requested and not job.done and client.find_vm(job.vmid) is None


def test_a_595_proves_the_clone_never_arrived_so_it_is_retried(testbed, client):
    testbed.sim_admin.fail("POST", "/nodes/*/qemu/*/clone", status=595, message="Connection refused")
    seq = last_seq(testbed)
    job = run_clone(client, CloneJob("pve", TEMPLATE, "after-595"), timeout=60)
    assert job.done and [r["status"] for r in calls_since(testbed, seq, "POST", r".*/clone")] == [595, 200]
    destroy(client, job.vmid)


def test_connection_errors_retry_only_when_safe():
    def refuse(m: str, p: str, d: dict[str, Any]) -> Any:
        raise requests.exceptions.ConnectionError("Max retries exceeded (Caused by NewConnectionError("
                                                  "'<conn>: Failed to establish a new connection: [Errno 111] "
                                                  "Connection refused'))")

    client, rec = fake_client(refuse)
    with pytest.raises(ProxmoxError, match="cannot reach the Proxmox API"):
        client.clone("pve", 9004, 120)
    assert len(rec.calls) == 1  # a message that merely mentions a refusal is not proof: not retried

    from urllib3.exceptions import MaxRetryError, NewConnectionError

    def refused(m: str, p: str, d: dict[str, Any]) -> Any:
        reason = NewConnectionError(None, "Failed to establish a new connection: [Errno 111] Connection refused")
        raise requests.exceptions.ConnectionError(MaxRetryError(None, "/x", reason))

    client, rec = fake_client(refused)
    with pytest.raises(ProxmoxError, match=r"cannot reach .*after 4 attempts"):
        client.clone("pve", 9004, 120)
    assert len(rec.calls) == 4  # never sent: safe even for a task-spawning POST

    def read_timeout(m: str, p: str, d: dict[str, Any]) -> Any:
        raise requests.exceptions.ReadTimeout("read timed out")

    client, rec = fake_client(read_timeout)
    with pytest.raises(ProxmoxError, match="may or may not have taken effect"):
        client.start("pve", 120)
    assert len(rec.calls) == 1
    client, rec = fake_client(read_timeout)
    with pytest.raises(ProxmoxError):
        client.vm_status("pve", 120)
    assert len(rec.calls) == 4  # a GET is safe to repeat


# ------------------------------------------------------------------------ destroy: not blindly
def test_a_destroy_whose_answer_is_lost_is_looked_up_not_repeated():
    """DELETE times out after it was sent: the client asks the task list instead of sending it again."""
    running = {"upid": UPID.replace("qmclone:9004", "qmdestroy:120"), "starttime": 2, "type": "qmdestroy"}

    def answer(m: str, p: str, d: dict[str, Any]) -> Any:
        if m == "DELETE":
            raise requests.exceptions.ReadTimeout("read timed out")
        if p == "nodes/pve/tasks":
            return [{"upid": "UPID:pve:00000001:00000001:00000001:qmdestroy:120:old@pve:", "starttime": 1,
                     "endtime": 1, "status": "OK"}, running]
        raise AssertionError(f"unexpected {m} {p}")

    client, rec = fake_client(answer)
    assert client.destroy("pve", 120) == running["upid"]
    assert [(m, p) for m, p, _ in rec.calls] == [("DELETE", "nodes/pve/qemu/120"), ("GET", "nodes/pve/tasks")]
    assert rec.calls[1][2] == {"vmid": 120, "typefilter": "qmdestroy", "source": "all", "limit": 50}

    # nothing runs and the VM still exists: nothing was started, so the DELETE goes out again
    deletes = iter([requests.exceptions.ReadTimeout("read timed out"), UPID])

    def second(m: str, p: str, d: dict[str, Any]) -> Any:
        if m == "DELETE":
            result = next(deletes)
            if isinstance(result, Exception):
                raise result
            return result
        if p == "nodes/pve/tasks":
            return []
        if p == "cluster/resources":
            return [{"type": "qemu", "vmid": 120, "node": "pve"}]
        raise AssertionError(f"unexpected {m} {p}")

    client, rec = fake_client(second)
    assert client.destroy("pve", 120) == UPID and client.retries == 1
    assert [m for m, _, _ in rec.calls].count("DELETE") == 2

    # a plain error (PVE answered) is raised as it is, without looking anything up
    def locked(m: str, p: str, d: dict[str, Any]) -> Any:
        from proxmoxer import ResourceException

        raise ResourceException(500, "VM is locked (clone)", "VM is locked (clone)")

    client, rec = fake_client(locked)
    with pytest.raises(ProxmoxError, match="VM is locked") as info:
        client.destroy("pve", 120)
    assert not isinstance(info.value, OutcomeUnknown) and len(rec.calls) == 1


def test_a_clone_request_without_an_answer_is_marked_and_its_possible_tasks_are_found():
    """run_clone marks whether PVE answered the clone POST: a UPID or an error from PVE is an answer, a
    read timeout after sending is not (the task may run). For an unanswered one, unanswered_clone_tasks
    names the running clone tasks of the source by this client's token that started since the request
    (less CLOCK_SKEW): not another user's, not an ended one, not an older one."""
    import time as _time

    from proxmoxer import ResourceException

    from nixgold.proxmox.vms import CLOCK_SKEW, unanswered_clone_tasks

    def lost(m: str, p: str, d: dict[str, Any]) -> Any:
        if m == "POST":
            raise requests.exceptions.ReadTimeout("read timed out")
        raise AssertionError(f"unexpected {m} {p}")

    def refused(m: str, p: str, d: dict[str, Any]) -> Any:
        raise ResourceException(500, "Internal Server Error", "storage 'x' does not exist")

    for answer, answered in ((lost, False), (refused, True)):
        client, _ = fake_client(answer)
        job = CloneJob("pve", 9004, "x", vmid=120)
        with pytest.raises(ProxmoxError):
            run_clone(client, job, timeout=60)
        assert (job.requested, job.answered, job.upid) == (True, answered, None), answer.__name__
        assert job.requested_at is not None and abs(job.requested_at - _time.time()) < 60

    def ok(m: str, p: str, d: dict[str, Any]) -> Any:
        if m == "POST":
            return UPID
        if p.endswith("/status"):
            return {"status": "stopped", "exitstatus": "OK"}
        return {}  # the clone's config: not protected

    client, _ = fake_client(ok)
    job = run_clone(client, CloneJob("pve", 9004, "x", vmid=120), timeout=60)
    assert (job.requested, job.answered, job.done) == (True, True, True)

    now = int(_time.time())
    ours = {"upid": UPID, "user": "nixgold@pve!t", "starttime": now, "type": "qmclone", "id": "9004"}
    listed = [ours,
              {**ours, "upid": UPID + "b", "user": "nixgold@pve!other"},                 # another token
              {**ours, "upid": UPID + "c", "endtime": now + 1, "status": "OK"},         # ended
              {**ours, "upid": UPID + "d", "starttime": now - int(CLOCK_SKEW) - 100},   # older
              {**ours, "upid": UPID + "e", "user": "nixgold@pve", "tokenid": "t"}]      # the split form
    client, rec = fake_client(lambda m, p, d: listed if p == "nodes/pve/tasks" else None)
    job = CloneJob("pve", 9004, "x", vmid=120, requested=True, requested_at=now)
    assert unanswered_clone_tasks(client, job) == [UPID, UPID + "e"]
    assert rec.calls == [("GET", "nodes/pve/tasks", {"source": "active", "typefilter": "qmclone", "vmid": 9004,
                                                     "userfilter": "nixgold@pve!t", "limit": 50})]


def make_vm(client: ProxmoxClient, vmid: int, name: str) -> int:
    destroy(client, vmid)
    client.wait_task(client.post("nodes/pve/qemu", vmid=vmid, name=name, memory=64), 60)
    return vmid


def destroy_tasks(client: ProxmoxClient, vmid: int) -> list[str]:
    return [t["upid"] for t in client.get("nodes/pve/tasks", vmid=vmid, typefilter="qmdestroy", source="all")]


@pytest.mark.parametrize("vmid, task_seconds", [(9871, 0.0), (9872, 4.0)], ids=["task-done", "task-running"])
def test_a_lost_destroy_answer_returns_the_task_it_started(testbed, client, vmid, task_seconds):
    """PVE started the destroy task, but its answer came after the client's read timeout. Sending the
    DELETE again would fail ("does not exist") or start a second task that fails; the client finds
    the first task (finished, or still running) and returns its UPID."""
    make_vm(client, vmid, "lost-answer")
    before = destroy_tasks(client, vmid)
    sim = testbed.sim_admin
    sim.delay_answer("DELETE", f"/nodes/pve/qemu/{vmid}", seconds=5)
    if task_seconds:
        sim.slow_task("DELETE", f"/nodes/pve/qemu/{vmid}", seconds=task_seconds)
    impatient = ProxmoxClient(bed_creds(testbed), retry=FAST, api=testbed.proxmoxer(timeout=2))
    upid = impatient.destroy("pve", vmid)
    assert impatient.wait_task(upid, 60)["exitstatus"] == "OK"
    assert client.find_vm(vmid) is None
    started = [u for u in destroy_tasks(client, vmid) if u not in before]
    assert started == [upid]  # one DELETE, one task: the one the lost answer would have named
    time.sleep(3.5)  # the late answer has gone out; still no second destroy
    assert [u for u in destroy_tasks(client, vmid) if u not in before] == [upid]


def test_a_destroy_that_never_started_is_sent_again(testbed, client):
    """The first DELETE is still queued in front of PVE when the client gives up: no task, the VM is
    there, so sending it again is safe (the late first one then finds nothing to do)."""
    vmid = make_vm(client, 9873, "late-request")
    testbed.sim_admin.delay("DELETE", f"/nodes/pve/qemu/{vmid}", seconds=4)
    impatient = ProxmoxClient(bed_creds(testbed), retry=FAST, api=testbed.proxmoxer(timeout=2))
    upid = impatient.destroy("pve", vmid)
    assert impatient.wait_task(upid, 60)["exitstatus"] == "OK" and impatient.retries == 1
    assert client.find_vm(vmid) is None
    time.sleep(2.5)


def test_destroy_vm_stops_and_destroys_a_vm_whose_start_task_was_under_way(testbed, client):
    """A start request cut by a signal: its task holds the config lock (qemu-server QemuServer.pm
    vm_start runs in lock_config) when destroy_vm reads the status ("stopped"), so the destroy task
    waits for the lock and then finds the VM running (API2/Qemu.pm destroy_vm's early checks, run
    again under the lock: "VM N is running - destroy failed"), or gives up on the lock on a slow
    machine. destroy_vm stops it and destroys it again; before, the VM was left (verify: "clones NOT
    destroyed")."""
    from nixgold.proxmox.vms import destroy_vm

    vmid = make_vm(client, 9874, "start-under-way")
    testbed.sim_admin.slow_task("POST", f"/nodes/pve/qemu/{vmid}/status/start", seconds=3)
    start = client.start("pve", vmid)
    try:
        assert client.vm_status("pve", vmid)["status"] == "stopped"  # the start task sleeps in the lock
        destroy_vm(client, "pve", vmid, timeout=60)
        assert client.find_vm(vmid) is None
        assert client.task_status(start)["exitstatus"] == "OK"  # the start went through: it was stopped
        failed = [t for t in client.get("nodes/pve/tasks", vmid=vmid, typefilter="qmdestroy", source="all")
                  if t.get("status") != "OK"]
        assert len(failed) == 1 and failed[0]["status"] in (  # the race happened
            f"VM {vmid} is running - destroy failed", f"can't lock file '/var/lock/qemu-server/lock-{vmid}.conf' - got timeout")
    finally:
        if client.find_vm(vmid) is not None:
            client.wait_task(client.stop("pve", vmid), 60)
            destroy(client, vmid)


def test_a_refresh_copy_whose_earlier_clone_task_still_runs_is_waited_for_not_called_taken(testbed, client):
    """refresh's full copy (swap.copy_into) retries after an unclear error by looking at the vmid. A clone
    task of the earlier attempt that still runs shows PVE's bare ``lock: clone`` config there (qemu-server
    clone_vm writes the description only later): that is waited for, then found to be this run's copy.
    Before, the bare config read as another's VM ("vmid N was taken by ... meanwhile")."""
    from nixgold.config.load import load_config
    from nixgold.refresh.state import ARCHIVE, dump_description, read_vm
    from nixgold.refresh.swap import SwapContext, copy_into
    from nixgold.render.manifest import REFRESH_KEY

    notes: list[str] = []
    ctx = SwapContext(client=client, config=load_config(testbed.config_path, env={}), refresh_id="r9copy",
                      say=notes.append, task_timeout=60)
    source = read_vm(client, TEMPLATE, "pve")
    assert source is not None and source.manifest is not None
    vmid = client.next_vmid()
    manifest = {**source.manifest, REFRESH_KEY: {"role": ARCHIVE, "id": "r9copy", "vmid": vmid}}
    testbed.sim_admin.slow_task("POST", "/nodes/*/qemu/*/clone", seconds=4)
    seq = last_seq(testbed)
    try:
        client.clone("pve", TEMPLATE, vmid, name="copy-under-way", full=True,  # the earlier attempt's task
                     description=dump_description(manifest))
        wait_for_clone_lock(client, vmid)
        done = copy_into(ctx, source, vmid, name="copy-under-way", manifest=manifest, role=ARCHIVE)
        assert done.vmid == vmid and done.role == ARCHIVE and ctx.ours(done) and not done.locked
        assert any(f"VM {vmid} is still being cloned (lock: clone)" in n for n in notes), notes
        assert len(calls_since(testbed, seq, "POST", r".*/qemu/\d+/clone")) == 1  # no second clone was sent
    finally:
        destroy(client, vmid)


# ---------------------------------------------------------------------------------- threads
def test_one_client_serves_many_threads(testbed, client):
    """Two threads make many calls at once through one client: each has its own proxmoxer API object
    (its own requests.Session), every call succeeds and the retry counter is exact."""
    injected = 7
    patient = RetryPolicy(attempts=injected + 2, base=0.001, cap=0.005)
    shared = ProxmoxClient(bed_creds(testbed), retry=patient)
    testbed.sim_admin.fail("GET", "/version", status=503, message="injected: busy", times=injected)
    seq = last_seq(testbed)
    calls, start = 40, threading.Barrier(2)
    apis: dict[int, Any] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            start.wait()
            apis[i] = shared.api
            for _ in range(calls):
                assert shared.version()["release"] == "9.1"
                assert shared.api is apis[i]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert shared.retries == injected
    assert len(calls_since(testbed, seq, "GET", r"/api2/json/version")) == 2 * calls + injected
    assert apis[0] is not apis[1] and shared.api not in (apis[0], apis[1])
    assert apis[0]._store["session"] is not apis[1]._store["session"]  # noqa: SLF001 - the point of the test

    # password login: a thread that did not build the client logs in on its first call
    pw = ProxmoxClient(bed_creds(testbed, token_id=None, token_secret=None, username="nixgold@pve",
                                 password=testbed.user_password), retry=FAST)
    answers: list[Any] = []
    t = threading.Thread(target=lambda: answers.append(pw.vm_config("pve", TEMPLATE)["template"]))
    t.start()
    t.join(60)
    assert answers == [1]

    # an injected API object is everyone's
    rec = Recorder(lambda m, p, d: {"release": "9.1"})
    injected_client = ProxmoxClient(bed_creds(testbed), api=rec, retry=FAST)
    seen: list[Any] = []
    t = threading.Thread(target=lambda: seen.append(injected_client.api))
    t.start()
    t.join(10)
    assert seen == [rec] and injected_client.api is rec


def test_an_unreachable_api_is_a_clear_error(testbed):
    with testbed.enter():
        client = ProxmoxClient(bed_creds(testbed, url=f"https://{testbed.host}:1/api2/json"), retry=FAST)
        with pytest.raises(ProxmoxError, match=r"cannot reach the Proxmox API at https://.*:1/api2/json"):
            client.clone("pve", TEMPLATE, 170)
    assert client.retries == FAST.attempts - 1


def test_timeouts_are_at_least_30s():
    client, _ = fake_client(timeout=5)
    assert client.timeout == 30


# -------------------------------------------------------------------------- vmids and locks
def test_a_taken_vmid_gets_a_new_one(testbed, client):
    sim = testbed.sim_admin
    first = client.next_vmid()
    sim.take_vmid_on_clone()
    notes: list[str] = []
    job = run_clone(client, CloneJob("pve", TEMPLATE, "race", vmid=first), timeout=60, say=notes.append)
    assert job.done and job.vmid != first and job.attempts == 2
    assert notes == [f"vmid {first} was taken by another client; cloning to {job.vmid} instead"]
    assert client.find_vm(first)["name"] == "other-client"  # the other client's VM is left alone
    assert client.find_vm(job.vmid)["name"] == "race"

    # the race can also surface inside the task
    sim.task_error("POST", "/nodes/*/qemu/*/clone", f"clone failed: unable to create VM {job.vmid + 1}: "
                                                     f"config file already exists")
    second = run_clone(client, CloneJob("pve", TEMPLATE, "race-task"), timeout=60,
                              allocate=lambda: client.next_vmid(exclude=[first, job.vmid]))
    assert second.done and second.attempts == 2
    destroy(client, first, job.vmid, second.vmid)


def test_next_vmid_skips_ids_this_process_uses(testbed, client):
    a = client.next_vmid()
    b = client.next_vmid(exclude=[a])
    testbed.sim_admin.take_vmid(b + 1)
    c = client.next_vmid(exclude=[a, b])
    assert a < b < c and c != b + 1
    destroy(client, b + 1)


def test_waiting_out_a_clone_lock(testbed, client):
    testbed.sim_admin.slow_task("POST", "/nodes/*/qemu/*/clone", seconds=3)
    newid = client.next_vmid()
    upid = client.clone("pve", TEMPLATE, newid, name="locked")
    deadline = time.monotonic() + 10
    while client.find_vm(newid) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.find_vm(newid)["lock"] == "clone"
    t0 = time.monotonic()
    config = client.wait_unlocked("pve", newid, 30, interval=0.2)
    assert "lock" not in config and config["name"] == "locked" and time.monotonic() - t0 > 1
    assert client.task_status(upid)["exitstatus"] == "OK"
    destroy(client, newid)


def test_a_lock_that_never_goes_away_is_reported(testbed, client):
    testbed.sim_admin.stuck_clone_lock()
    job = run_clone(client, CloneJob("pve", TEMPLATE, "stuck"), timeout=60)
    with pytest.raises(ProxmoxError, match=rf"VM {job.vmid} is still locked \(clone\) after 1s.*qm unlock"):
        client.wait_unlocked("pve", job.vmid, 1, interval=0.2)
    root = testbed.root_api()
    client.wait_task(root.nodes("pve").qemu(job.vmid).delete(skiplock=1), 60)


def test_clone_lock_timeouts_are_retried_then_reported(testbed, client):
    sim = testbed.sim_admin
    sim.clone_lock_timeout(times=1)
    notes: list[str] = []
    job = run_clone(client, CloneJob("pve", TEMPLATE, "lock-once"), timeout=60, say=notes.append)
    assert job.done and "lock timeout" in notes[0]
    destroy(client, job.vmid)

    sim.clone_lock_timeout(times=0)
    failed = CloneJob("pve", TEMPLATE, "lock-always")
    with pytest.raises(ProxmoxError) as info:
        run_clone(client, failed, timeout=60)
    text = str(info.value)
    assert "failed 3 times on a lock timeout" in text and "can't lock file" in text and "got timeout" in text
    assert client.find_vm(failed.vmid) is None


def test_linked_clone_refusal_falls_back_to_full_only_when_allowed(testbed, client):
    testbed.sim_admin.fail("POST", "/nodes/*/qemu/*/clone", status=500,
                           message="Linked clone feature is not supported for drive 'scsi0'")
    job = run_clone(client, CloneJob("pve", TEMPLATE, "fallback", full=False), timeout=120, linked_fallback=True)
    assert job.done and job.full is True and job.mode == "full"
    assert client.vm_config("pve", job.vmid)["scsi0"].startswith(f"local:{job.vmid}/vm-{job.vmid}-disk-0")
    destroy(client, job.vmid)
    testbed.sim_admin.fail("POST", "/nodes/*/qemu/*/clone", status=500,
                           message="Linked clone feature is not supported for drive 'scsi0'")
    with pytest.raises(ProxmoxError, match="Linked clone feature is not supported"):
        run_clone(client, CloneJob("pve", TEMPLATE, "no-fallback", full=False), timeout=60)


def test_parallel_clients_get_distinct_vmids(testbed, client):
    jobs = [CloneJob("pve", TEMPLATE, f"parallel-{i}") for i in range(3)]
    lock = threading.Lock()
    used: set[int] = set()

    def allocate() -> int:
        with lock:
            vmid = client.next_vmid(exclude=used)
            used.add(vmid)
            return vmid

    threads = [threading.Thread(target=run_clone, args=(client, job), kwargs={"timeout": 60, "allocate": allocate})
               for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(job.done for job in jobs) and len({job.vmid for job in jobs}) == 3
    destroy(client, *(job.vmid for job in jobs))


# ------------------------------------------------------------------------------ agent data
def test_agent_addresses_skip_loopback_and_link_local_and_prefer_ipv4_on_net0():
    interfaces = [
        {"name": "lo", "hardware-address": "00:00:00:00:00:00",
         "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4"},
                          {"ip-address": "::1", "ip-address-type": "ipv6"}]},
        {"name": "docker0", "hardware-address": "02:42:ac:11:00:01",
         "ip-addresses": [{"ip-address": "172.17.0.1", "ip-address-type": "ipv4"}]},
        {"name": "eth0", "hardware-address": "bc:24:11:aa:bb:cc",
         "ip-addresses": [{"ip-address": "fe80::be24:11ff:feaa:bbcc", "ip-address-type": "ipv6"},
                          {"ip-address": "2001:db8::5", "ip-address-type": "ipv6"},
                          {"ip-address": "169.254.3.4", "ip-address-type": "ipv4"},
                          {"ip-address": "10.99.0.123", "ip-address-type": "ipv4"}]},
    ]
    assert agent_addresses(interfaces, "BC:24:11:AA:BB:CC") == ["10.99.0.123", "172.17.0.1", "2001:db8::5"]
    assert agent_addresses(interfaces[:1]) == []
    assert agent_addresses([{"name": "eth0", "ip-addresses": [{"ip-address": "2001:db8::5"}]}]) == ["2001:db8::5"]


def test_agent_results_are_unwrapped():
    client, rec = fake_client(lambda m, p, d: {"result": {"id": "debian"}})
    assert client.agent("pve", 120, "get-osinfo") == {"id": "debian"}


def test_missing_credentials_are_explained():
    with pytest.raises(ProxmoxError, match="PROXMOX_TOKEN_SECRET is not"):
        ProxmoxClient(Credentials(url="https://pve:8006/api2/json", token_id="a@pve!b"))
    with pytest.raises(ProxmoxError, match="no Proxmox API URL"):
        ProxmoxClient(Credentials())
