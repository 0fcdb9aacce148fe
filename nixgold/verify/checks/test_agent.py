"""The QEMU guest agent: running in the guest, and answering Proxmox."""

from __future__ import annotations

import pytest

from nixgold.errors import ProxmoxError
from nixgold.verify.checks.facts import Probe
from nixgold.verify.checks.helpers import run, systemd_unit, unit_probes, unit_problem

VIRTIO_PORT = "/dev/virtio-ports/org.qemu.guest_agent.0"
HAS_VIRTIO_PORT = f"test -e {VIRTIO_PORT}"
#: nixpkgs nixos/modules/virtualisation/qemu-guest-agent.nix: systemd.services.qemu-guest-agent;
#: Debian's package names it qemu-guest-agent.service too, some distributions qemu-ga.service.
AGENT_UNITS = ("qemu-guest-agent.service", "qemu-ga.service")


def probes(ctx):
    return [*unit_probes(*AGENT_UNITS), Probe(HAS_VIRTIO_PORT)]


@pytest.mark.check("agent.service", "qemu-guest-agent is enabled and running")
def test_agent_enabled_and_running(host):
    props = systemd_unit(host, *AGENT_UNITS)
    problem = unit_problem(props, "qemu-guest-agent.service")
    assert problem is None, problem


@pytest.mark.check("agent.virtio-port", "the guest agent's virtio serial port is present")
def test_agent_virtio_port(host):
    assert run(host, HAS_VIRTIO_PORT).rc == 0, \
        f"{VIRTIO_PORT} is missing: the VM has no agent channel (agent: 1) or virtio_console is not loaded"


def _agent(ctx, clone, command: str):
    try:
        return ctx.agent(clone.vmid, command)
    except ProxmoxError as exc:
        raise AssertionError(f"agent {command} failed: {' '.join(str(exc).split())}") from None


@pytest.mark.check("agent.ping", "Proxmox reaches the guest agent (agent ping and get-osinfo answer)")
def test_agent_answers_proxmox(ctx, clone):
    _agent(ctx, clone, "ping")
    info = _agent(ctx, clone, "get-osinfo")
    assert isinstance(info, dict) and (info.get("id") or info.get("name")), \
        f"agent get-osinfo answered without an OS id: {info!r}"


@pytest.mark.check("agent.host-name", "the guest agent reports the clone's name as host name")
def test_agent_host_name(ctx, clone):
    if clone.vmid == 0:
        pytest.skip("needs the Proxmox API (runs under `invoke verify`)")
    answer = _agent(ctx, clone, "get-host-name")
    name = answer.get("host-name") if isinstance(answer, dict) else None
    assert name is not None, f"agent get-host-name answered {answer!r}"
    assert str(name).split(".")[0] == clone.name, f"the agent reports host name {name!r}, not {clone.name!r}"
