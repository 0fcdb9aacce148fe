"""A stand-in ``packer`` for CLI tests that need Packer's side of a build but no guest.

Selected with ``--set build.packer=<path>``. It answers like Debian's Packer 1.6.6 where nixgold
asks (``packer version`` -> ``Packer v1.6.6``: the bundled dialect; ``packer validate`` exits 0) and
``packer build -machine-readable ... <template dir>`` plays one scenario, reading what real Packer
would read: the rendered HCL in the template directory (node, vm_id, template_name, the manifest in
``locals``) and the ``PKR_VAR_*`` variables in its environment (``build_vm_name``, the API URL and
the password; ``SSL_CERT_FILE`` for the API's CA). Every line it prints about the build is a
machine-readable line (``timestamp,target,type,data...`` with ``,`` as ``%!(PACKER_COMMA)``), and
the scenarios put the API password into them: Packer 1.6.6 does not redact sensitive variables
in machine-readable output (see tests/test_packer_runner.py), so nixgold's redaction must.

Scenarios:

``fail``      prints the first stage lines and an error naming the password, exits 1;
``hang``      prints stage lines up to "Waiting for SSH", then waits for SIGINT (which nixgold
              forwards), prints Packer's interrupt lines with the password, exits 1;
``leave-vm``  creates the build VM through the API (name = ``PKR_VAR_build_vm_name``, at the HCL's
              vm_id) and fails without deleting it, like a Packer killed mid-cleanup;
``leave-foreign``  the same, but the VM is another build's: named ``<template name>-building`` (the
              name every build of this template used before build ids) with Packer's default
              build-VM description ("Packer ephemeral build VM", packer-plugin-proxmox
              builder/proxmox/common/step_start_vm.go), and no build id;
``template``  creates the VM, turns it into the template (name and manifest description from the
              HCL) without a guest agent, prints the artifact lines, exits 0.

Each run appends ``{"argv": [...], "env": [names]}`` (names only) to the record file.
"""
from __future__ import annotations

import sys
from pathlib import Path

SCENARIOS = ("fail", "hang", "leave-vm", "leave-foreign", "template")

_SCRIPT = r'''#!{python}
import datetime, glob, json, os, signal, sys, time

SCENARIO = {scenario!r}
RECORD = {record!r}
TARGET = "nixgold.proxmox.nixos"

with open(RECORD, "a") as fh:
    fh.write(json.dumps({{"argv": sys.argv, "env": sorted(os.environ)}}) + "\n")


def emit(kind, text, target=""):
    text = text.replace(",", "%!(PACKER_COMMA)").replace("\r", "\\r").replace("\n", "\\n")
    print(f"{{int(time.time())}},{{target}},{{kind}},{{text}}", flush=True)


def say(text):
    emit("ui,say", f"==> {{TARGET}}: {{text}}")


def password():
    return os.environ.get("PKR_VAR_proxmox_password") or os.environ.get("PKR_VAR_proxmox_token") or ""


def fail(message, code=1):
    emit("ui,error", f"==> {{TARGET}}: {{message}}")
    emit("ui,error", f"Build '{{TARGET}}' errored after 1 second 2 milliseconds: {{message}}")
    emit("ui,say", "\n==> Wait completed after 1 second 3 milliseconds")
    emit("error-count", "1")
    emit("ui,error", "\n==> Some builds didn't complete successfully and had errors:")
    emit("error", message, TARGET)
    emit("ui,error", f"--> {{TARGET}}: {{message}}")
    emit("ui,say", "\n==> Builds finished but no artifacts were created.")
    sys.exit(code)


def template_dir():
    return sys.argv[-1]


def hcl():
    import hcl2

    (path,) = glob.glob(os.path.join(template_dir(), "*.pkr.hcl"))
    with open(path) as fh:
        data = hcl2.load(fh)
    (source,) = [body for labels in data["source"] for kind in labels.values() for body in kind.values()]
    return data, source


def unquote(value):
    return json.loads(value) if isinstance(value, str) and value.startswith('"') else value


def manifest(data):
    env = {{"${{var.build_id}}": os.environ["PKR_VAR_build_id"], "${{var.git_commit}}": os.environ["PKR_VAR_git_commit"],
           "${{timestamp()}}": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}}

    def value(v):
        if isinstance(v, dict):
            return {{k: value(x) for k, x in v.items()}}
        return env.get(v, unquote(v))

    (locals_,) = data["locals"]
    return value(locals_["manifest"])


class Api:
    """Ticket login with the password Packer was given, like Packer 1.6's proxmox builder."""

    def __init__(self):
        import requests

        self.url = os.environ["PKR_VAR_proxmox_url"].rstrip("/")
        self.s = requests.Session()
        self.s.verify = os.environ.get("SSL_CERT_FILE") or True
        r = self.s.post(f"{{self.url}}/access/ticket", timeout=30,
                        data={{"username": os.environ["PKR_VAR_proxmox_username"], "password": password()}})
        r.raise_for_status()
        d = r.json()["data"]
        self.s.cookies.set("PVEAuthCookie", d["ticket"])
        self.s.headers["CSRFPreventionToken"] = d["CSRFPreventionToken"]

    def call(self, method, path, **data):
        r = self.s.request(method, f"{{self.url}}/{{path}}", data=data, timeout=60)
        if r.status_code != 200:
            fail(f"{{method}} /{{path}}: {{r.status_code}} {{r.reason}}")
        return r.json()["data"]

    def wait(self, node, upid):
        while True:
            status = self.call("GET", f"nodes/{{node}}/tasks/{{upid}}/status")
            if status.get("status") == "stopped":
                if status.get("exitstatus") != "OK":
                    fail(f"task {{upid}}: {{status.get('exitstatus')}}")
                return
            time.sleep(0.2)


args = sys.argv[1:]
if args[:1] == ["version"]:
    print("Packer v1.6.6")
    sys.exit(0)
if args[:1] == ["validate"]:
    emit("ui,say", "The configuration is valid.")
    sys.exit(0)
if args[:1] != ["build"]:
    print(f"fake packer: unknown command {{args}}", file=sys.stderr)
    sys.exit(2)

say("Creating VM")
emit("ui,message", f"    {{TARGET}}: logging in with password {{password()}}")
print(f"a stray line on stderr, password={{password()}}", file=sys.stderr, flush=True)
if SCENARIO == "fail":
    fail(f"Error creating VM: 401 authentication failure for {{os.environ.get('PKR_VAR_proxmox_username')}} "
         f"with password {{password()}}")
if SCENARIO == "hang":
    interrupted = []
    signal.signal(signal.SIGINT, lambda *a: interrupted.append(1))
    say("Starting VM")
    say("Starting HTTP server on port 8100")
    say("Waiting 2s for boot")
    say("Typing the boot command")
    say("Waiting for SSH to become available...")
    deadline = time.monotonic() + 600
    while not interrupted and time.monotonic() < deadline:
        time.sleep(0.1)
    emit("ui,error", "Cancelling build after receiving interrupt")
    say("Stopping VM")
    say("Deleting VM")
    fail(f"Build was cancelled (password {{password()}})")

data, source = hcl()
node, vmid = unquote(source["node"]), int(source["vm_id"])
api = Api()
if SCENARIO == "leave-foreign":
    name = unquote(source["template_name"]) + "-building"
    api.wait(node, api.call("POST", f"nodes/{{node}}/qemu", vmid=vmid, name=name, memory=64,
                            description="Packer ephemeral build VM"))
else:
    name = os.environ["PKR_VAR_build_vm_name"]
    api.wait(node, api.call("POST", f"nodes/{{node}}/qemu", vmid=vmid, name=name, memory=64,
                            description="Packer ephemeral build VM"))
say("Starting VM")
if SCENARIO in ("leave-vm", "leave-foreign"):
    fail(f"Timeout waiting for SSH. (and the cleanup never ran; password {{password()}})")
assert SCENARIO == "template", SCENARIO
say("Stopping VM")
say("Converting VM to template")
api.call("PUT", f"nodes/{{node}}/qemu/{{vmid}}/config", name=unquote(source["template_name"]),
         description=json.dumps(manifest(data)))
api.wait(node, api.call("POST", f"nodes/{{node}}/qemu/{{vmid}}/template"))
emit("ui,say", f"Build '{{TARGET}}' finished after 3 seconds.")
emit("artifact-count", "1", TARGET)
emit("artifact,0,builder-id", "proxmox.iso", TARGET)
emit("artifact,0,id", str(vmid), TARGET)
emit("artifact,0,string", f"A template was created: {{vmid}}", TARGET)
emit("artifact,0,end", "", TARGET)
sys.exit(0)
'''


def write_fake_packer(directory: Path, scenario: str, record: Path) -> Path:
    """Write the stand-in ``packer`` for ``scenario`` into ``directory``; returns its path."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r} (one of {SCENARIOS})")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "packer"
    path.write_text(_SCRIPT.format(python=sys.executable, scenario=scenario, record=str(record)))
    path.chmod(0o755)
    return path
