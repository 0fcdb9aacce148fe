"""The pytest side of the check suite: the ``check`` marker, the fixtures and the result collector.

Two modes share the check modules:

* :class:`NixgoldMode` (``invoke verify`` -> :func:`nixgold.verify.checks.run_checks`): the ``clone``
  parameter comes from the :class:`~nixgold.verify.checks.model.CheckContext`, ``host`` is a testinfra
  paramiko host per clone (host keys not checked: the clones are throwaway; one connection per
  clone, reused by every check), the selected modules' ``probes(ctx)`` are gathered in one command
  per clone before its first check (:mod:`nixgold.verify.checks.facts`), and every test becomes a
  :class:`~nixgold.verify.checks.model.CheckResult`.
* :class:`StandaloneMode` (``pytest --hosts=ssh://user@ip nixgold/verify/checks/``, registered by
  ``conftest.py``): ``host`` is testinfra's own fixture; ``clone`` and ``ctx`` are built from the
  command line, and checks that need Proxmox or the nixgold context skip with a reason.
"""

from __future__ import annotations

import functools
import getpass
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import pytest

from nixgold.text import one_line as text_one_line
from nixgold.verify.checks.facts import STORE, Probe, unique, valid_probe
from nixgold.verify.checks.model import CheckContext, CheckResult, CloneTarget
from nixgold.verify.ssh import CHECK_ATTEMPTS
from nixgold.verify.ssh import connect as ssh_connect

log = logging.getLogger(__name__)

PLUGIN_NAME = "nixgold-checks"
MARKER_HELP = ("check(id, summary): a nixgold verification check with a stable id "
               "(like sshd.password-auth-off) and a one-line summary")
CLONES_TARGET = "clones"
REASON_LIMIT = 300


@functools.cache
def clone_backend() -> type:
    """testinfra's paramiko backend, connecting through :func:`nixgold.verify.ssh.connect` (its
    ``client``, also when testinfra connects again after a dropped transport: ``del self.client``).
    testinfra's own ``client`` waits paramiko's fixed 15 s for the banner whatever its timeout: a clone
    that had answered boot.ssh but was slow a moment later (a busy node, cloud-init's last stage) failed
    every check. Here: every wait ``timeout`` (connect_timeout), :data:`CHECK_ATTEMPTS` tries before
    the login, the clone's new host key accepted, only the verify key offered."""
    from testinfra.backend.paramiko import ParamikoBackend

    class CloneBackend(ParamikoBackend):
        @functools.cached_property
        def client(self) -> Any:
            return ssh_connect(self.host.name, self.host.user, self.ssh_identity_file, self.timeout,
                               attempts=CHECK_ATTEMPTS)

    return CloneBackend


class CloneHost(NamedTuple):
    """One clone and its testinfra host (the ``clones`` fixture yields these)."""

    target: CloneTarget
    host: Any  # testinfra.host.Host

    @property
    def name(self) -> str:
        return self.target.name


def no_proxmox(vmid: int, command: str) -> Any:
    """``ctx.agent`` outside ``invoke verify``: the calling check is skipped."""
    pytest.skip("needs the Proxmox API (runs under `invoke verify`)")


# --- ids, summaries, reasons -----------------------------------------------------------------
def check_meta(item: pytest.Item) -> tuple[str, str]:
    """(id, summary) from ``@pytest.mark.check``; else derived from the module and function names."""
    marker = item.get_closest_marker("check")
    func = getattr(item, "obj", None)
    doc = ((getattr(func, "__doc__", None) or "").strip().splitlines() or [""])[0]
    if marker is not None and marker.args:
        check_id = str(marker.args[0])
        summary = str(marker.args[1]) if len(marker.args) > 1 else str(marker.kwargs.get("summary", doc))
        return check_id, summary
    module = getattr(getattr(item, "module", None), "__name__", "custom").rsplit(".", 1)[-1]
    name = getattr(item, "originalname", item.name)
    check_id = f"{module.removeprefix('test_')}.{name.removeprefix('test_')}".replace("_", "-")
    return check_id, doc or name.removeprefix("test_").replace("_", " ")


def one_line(text: str, limit: int = REASON_LIMIT) -> str:
    return text_one_line(text, limit)


def describe(exc: BaseException) -> str:
    """A one-line reason: the assert message (without pytest's explanation), or ``Type: message``."""
    if isinstance(exc, pytest.skip.Exception):
        return one_line(getattr(exc, "msg", str(exc)))
    text = str(exc).strip()
    if isinstance(exc, (AssertionError, pytest.fail.Exception)):
        lines = [line for line in text.splitlines() if line.strip()]
        return one_line(lines[0] if lines else "assertion failed")
    return one_line(f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": "))


def _is_failure(exc: BaseException) -> bool:
    return isinstance(exc, (AssertionError, pytest.fail.Exception))


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return one_line(str(longrepr[2]).removeprefix("Skipped: "))
    return one_line(str(longrepr or "skipped"))


def _collect_error(report: pytest.CollectReport) -> str:
    text = report.longreprtext or ""
    errors = [line[1:].strip() for line in text.splitlines() if line.startswith("E ")]
    return one_line(errors[-1] if errors else (text.strip().splitlines() or ["collection failed"])[-1])


def target_of(item: pytest.Item) -> str:
    params = getattr(getattr(item, "callspec", None), "params", {}) or {}
    clone = params.get("clone")
    if isinstance(clone, CloneTarget):
        return clone.name
    if isinstance(clone, str):  # NixgoldMode parametrizes by clone name
        return clone
    host = params.get("_testinfra_host")
    if host is not None:
        return str(host.backend.get_hostname())
    return CLONES_TARGET


# --- shared hooks --------------------------------------------------------------------------------
class _Base:
    def pytest_configure(self, config: pytest.Config) -> None:
        config.addinivalue_line("markers", MARKER_HELP)

    def pytest_itemcollected(self, item: pytest.Item) -> None:
        check_id, summary = check_meta(item)
        item.user_properties.append(("check", check_id))
        if summary:
            item.user_properties.append(("summary", summary))


class NixgoldMode(_Base):
    """Runs the suite for ``invoke verify``; :attr:`results` holds one CheckResult per test."""

    def __init__(self, ctx: CheckContext, connect_timeout: int = 30, scope: str = "all",
                 facts: dict[str, list[dict[str, Any]]] | None = None,
                 ready: Callable[[], tuple[CheckContext, dict[str, list[dict[str, Any]]]]] | None = None):
        self.context = ctx
        #: A started-early run: blocks until the clones are ready, then gives their final context and
        #: facts (the same clones by name as ``ctx``); called once, after collection.
        self.ready = ready
        self._items: list[pytest.Item] = []
        self.connect_timeout = connect_timeout
        self.scope = scope  # "clone": per-clone checks only, "cross": checks across clones, "all"
        self.results: list[CheckResult] = []
        self.order: list[str] = []  # every check id of the suite, in suite order (before the scope)
        self.probes: list[Probe] = []  # what the check modules declared, in their order
        self.cross_probes: list[Probe] = []  # what the modules of the checks across clones declared
        self.warnings: list[str] = []  # for the user: declarations or gathering that did not work
        self.facts_in = facts or {}  # clone name -> answers gathered by an earlier run (FactStore.export)
        self.gather_seconds: dict[str, float] = {}
        self._pending: dict[str, dict[str, Any]] = {}
        self._hosts: dict[str, Any] = {}
        self._unreachable: dict[str, str] = {}  # clone name -> why the first connection failed

    # -- connections ------------------------------------------------------------------------------
    def host_for(self, clone: CloneTarget) -> Any:
        if clone.name not in self._hosts and self.context.connection == "local":
            import testinfra

            self._hosts[clone.name] = testinfra.get_host("local://")
        if clone.name not in self._hosts:
            from testinfra.host import Host

            address = f"[{clone.address}]" if ":" in clone.address else clone.address
            backend = clone_backend()(f"{clone.ssh_user}@{address}", ssh_identity_file=str(clone.ssh_key_file),
                                      timeout=self.connect_timeout)
            self._hosts[clone.name] = Host(backend)
            if self.facts_in.get(clone.name):
                STORE.load(self._hosts[clone.name], self.facts_in[clone.name])
        return self._hosts[clone.name]

    def facts_out(self) -> dict[str, list[dict[str, Any]]]:
        """Per clone, the user-level answers the checks of the cross run asked for (handed on to it)."""
        return {name: STORE.export(host, self.cross_probes) for name, host in self._hosts.items()}

    def one_by_one(self) -> dict[str, list[str]]:
        """Per clone, the commands the checks ran outside the gathered facts."""
        return {name: STORE.one_by_one(host) for name, host in self._hosts.items()}

    def close(self) -> None:
        for host in self._hosts.values():
            client = host.backend.__dict__.get("client")  # created lazily by testinfra
            if client is not None:
                client.close()
        self._hosts.clear()

    # -- fixtures ---------------------------------------------------------------------------------
    @pytest.fixture
    def ctx(self) -> CheckContext:
        return self.context

    def connected(self, clone: CloneTarget) -> Any:
        """The clone's host, connected; one failed connection fails every later check of that clone at once."""
        if clone.name in self._unreachable:
            raise ConnectionError(self._unreachable[clone.name])
        host = self.host_for(clone)
        if clone.name in self.facts_in:
            return host  # answered from an earlier run's facts; connects on its first other command
        try:
            if hasattr(type(host.backend), "client"):
                host.backend.client  # noqa: B018 - the backend connects on first use (clone_backend)
        except Exception as exc:
            self._unreachable[clone.name] = f"no SSH connection to {clone.ssh_user}@{clone.address}: {describe(exc)}"
            raise ConnectionError(self._unreachable[clone.name]) from None
        return host

    @pytest.fixture
    def host(self, clone: CloneTarget) -> Any:
        return self.connected(clone)

    @pytest.fixture
    def clones(self) -> tuple[CloneHost, ...]:
        if not self.context.clones:
            pytest.skip("no clones")
        return tuple(CloneHost(c, self.connected(c)) for c in self.context.clones)

    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """Keep the scope's checks; remember the suite's order of check ids for merging runs."""
        for item in items:
            check_id = check_meta(item)[0]
            if check_id not in self.order:
                self.order.append(check_id)
        self._items = list(items)  # their probes are asked once the context is final (pytest_runtestloop)
        if self.scope != "all":
            keep = [i for i in items if per_clone(i) == (self.scope == "clone")]
            deselected = [i for i in items if i not in keep]
            if deselected:
                config.hook.pytest_deselected(items=deselected)
            items[:] = keep

    def pytest_runtestloop(self, session: pytest.Session) -> None:
        """Before the first check: wait for the clones when started early (:attr:`ready`), then
        connect to each clone and gather its facts in one command (the clones at the same time)."""
        if session.config.option.collectonly:
            return
        if self.ready is not None:  # the same clones: CheckChild.go(), the one writer, refuses others
            self.context, self.facts_in = self.ready()
        # every module's probes, also those of checks another run makes: their answers are handed on
        self.probes = module_probes(self._items, self.context, self.warnings)
        self.cross_probes = module_probes([i for i in self._items if not per_clone(i)], self.context, [])
        if not self.probes:
            return
        todo = [c for c in self.context.clones if c.name not in self.facts_in]
        if len(todo) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(todo)) as pool:
                list(pool.map(self._gather, todo))
        elif todo:
            self._gather(todo[0])

    def _gather(self, clone: CloneTarget) -> None:
        t0 = time.monotonic()
        try:
            host = self.connected(clone)
            answered = STORE.gather(host, self.probes)
        except ConnectionError:
            return  # every check of this clone fails with the reason
        except Exception as exc:  # the checks then run their commands one by one
            self.warnings.append(f"gathering the facts on {clone.name} failed ({describe(exc)}): its checks ran "
                                 f"their commands one by one")
            return
        self.gather_seconds[clone.name] = time.monotonic() - t0
        log.debug("%s: %d of %d facts in %.1fs", clone.name, answered, len(self.probes), self.gather_seconds[clone.name])

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "clone" in metafunc.fixturenames:  # by name: a run started early learns the rest later
            names = [c.name for c in self.context.clones]
            metafunc.parametrize("clone", names, ids=names, indirect=True)

    @pytest.fixture
    def clone(self, request: pytest.FixtureRequest) -> CloneTarget:
        return next(c for c in self.context.clones if c.name == request.param)

    # -- results ----------------------------------------------------------------------------------
    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
        report = yield
        self._record(item, call, report)
        return report

    def _record(self, item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
        state = self._pending.setdefault(item.nodeid, {"seconds": 0.0, "outcome": None, "reason": ""})
        state["seconds"] += report.duration
        exc = call.excinfo.value if call.excinfo is not None else None
        if report.when == "setup":
            if report.failed:
                state["outcome"], state["reason"] = "error", describe(exc) if exc else "setup failed"
            elif report.skipped:
                state["outcome"], state["reason"] = "skipped", _skip_reason(report)
        elif report.when == "call":
            if report.skipped:
                state["outcome"], state["reason"] = "skipped", _skip_reason(report)
            elif report.failed:
                failed = exc is not None and _is_failure(exc)
                state["outcome"] = "failed" if failed else "error"
                state["reason"] = describe(exc) if exc else one_line(report.longreprtext)
            else:
                state["outcome"] = "passed"
        else:  # teardown
            if report.failed and state["outcome"] in (None, "passed"):
                state["outcome"], state["reason"] = "error", f"teardown: {describe(exc) if exc else 'failed'}"
            self._finish(item)

    def _finish(self, item: pytest.Item) -> None:
        state = self._pending.pop(item.nodeid)
        check_id, summary = check_meta(item)
        outcome = state["outcome"] or "error"
        reason = "" if outcome == "passed" else state["reason"]
        self.results.append(CheckResult(check_id, target_of(item), outcome, round(state["seconds"], 3), reason,
                                        summary))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            where = str(getattr(report, "fspath", "") or report.nodeid or "checks")
            self.results.append(CheckResult("checks.collect", os.path.basename(where) or where, "error", 0.0,
                                            _collect_error(report), "the check modules import"))


class StandaloneMode(_Base):
    """``pytest --hosts=... nixgold/verify/checks/``: context from ``--nixgold-*`` options and the hosts."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self._built: tuple[CloneHost, ...] | None = None

    def _clone_hosts(self) -> tuple[CloneHost, ...]:
        if self._built is None:
            import testinfra

            opt = self.config.option
            specs = opt.hosts.split(",") if getattr(opt, "hosts", None) else [None]
            hosts = testinfra.get_hosts(specs, connection=opt.connection, ssh_config=opt.ssh_config,
                                        ssh_identity_file=opt.ssh_identity_file, sudo=opt.sudo,
                                        sudo_user=opt.sudo_user, ansible_inventory=opt.ansible_inventory,
                                        force_ansible=opt.force_ansible)
            self._built = tuple(CloneHost(standalone_target(h), h) for h in hosts)
        return self._built

    @pytest.fixture
    def ctx(self) -> CheckContext:
        opt = self.config.option
        clones = self._clone_hosts()
        ciuser = opt.nixgold_ciuser or (clones[0].target.ssh_user if clones else getpass.getuser())
        return CheckContext(profile=opt.nixgold_profile, nixos_release=opt.nixgold_release or "",
                            permit_root_login=opt.nixgold_permit_root_login, ciuser=ciuser,
                            injected_public_key=public_key_of(opt.ssh_identity_file),
                            allowed_keys=tuple(opt.nixgold_allowed_key or ()), clones=tuple(c.target for c in clones),
                            agent=no_proxmox)

    @pytest.fixture
    def clone(self, host: Any) -> CloneTarget:
        return standalone_target(host)

    @pytest.fixture
    def clones(self) -> tuple[CloneHost, ...]:
        return self._clone_hosts()


def per_clone(item: pytest.Item) -> bool:
    """A check made once per clone (``clone`` parameter); the rest (``clones``, or neither) run once."""
    return "clone" in (getattr(getattr(item, "callspec", None), "params", None) or {})


def module_probes(items: list[pytest.Item], ctx: CheckContext, warnings: list[str]) -> list[Probe]:
    """What the modules of ``items`` declare in ``probes(ctx)``, in module order, without repeats.
    A declaration that fails or is not a valid Probe is left out (its checks ask one by one) and
    said in ``warnings``."""
    probes: list[Probe] = []
    seen: set[int] = set()
    for item in items:
        module = getattr(item, "module", None)
        declare = getattr(module, "probes", None)
        if module is None or id(module) in seen or not callable(declare):
            continue
        seen.add(id(module))
        name = getattr(module, "__name__", "?").rsplit(".", 1)[-1]
        try:
            declared = list(declare(ctx))
        except Exception as exc:
            warnings.append(f"{name}.probes() failed ({describe(exc)}): its checks ran their commands one by one")
            continue
        for probe in declared:
            problem = valid_probe(probe)
            if problem is None:
                probes.append(probe)
            else:
                warnings.append(f"{name}.probes(): left out a probe ({problem}): that command runs on its own")
    return unique(probes)


def standalone_target(host: Any) -> CloneTarget:
    """A CloneTarget for a testinfra host given on the command line (vmid 0: no Proxmox)."""
    backend = host.backend
    spec = getattr(backend, "host", None)
    name = str(backend.get_hostname())
    key = getattr(backend, "ssh_identity_file", None) or ""
    return CloneTarget(vmid=0, name=name, node="", address=getattr(spec, "name", None) or name,
                       ssh_user=getattr(spec, "user", None) or getpass.getuser(), ssh_key_file=Path(key),
                       disk_bytes=0)


def public_key_of(identity_file: str | None) -> str:
    """The OpenSSH public key line of a private key file ("" when none or unreadable)."""
    if not identity_file:
        return ""
    pub = Path(str(identity_file) + ".pub")
    try:
        if pub.is_file():
            return " ".join(pub.read_text().split()[:2])
        import paramiko

        key = paramiko.PKey.from_path(identity_file)
        return f"{key.get_name()} {key.get_base64()}"
    except Exception:  # an unreadable key only costs the key check (it skips)
        return ""


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("nixgold", "nixgold check suite (standalone runs)")
    group.addoption("--nixgold-profile", default="nixos", choices=("nixos", "generic"),
                    help="check profile: nixos (default) or generic (skips the NixOS checks)")
    group.addoption("--nixgold-release", default="", help="expected NixOS release, e.g. 26.05")
    group.addoption("--nixgold-permit-root-login", default="prohibit-password",
                    help="expected sshd PermitRootLogin (default prohibit-password)")
    group.addoption("--nixgold-ciuser", default=None, help="the cloud-init user (default: the SSH user)")
    group.addoption("--nixgold-allowed-key", action="append", default=[],
                    help="a public key that may be in authorized_keys (repeatable)")
