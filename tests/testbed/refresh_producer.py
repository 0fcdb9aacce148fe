"""The refresh's test seam for the BUILD phase only: a stand-in image imported as the candidate.

    NIXGOLD_REFRESH_PRODUCER=tests.testbed.refresh_producer:standin
    NIXGOLD_TESTBED_ROOT=<bed root>  NIXGOLD_TESTBED_NETNS=<bed netns>  NIXGOLD_STANDIN_VARIANT=good

It does what a Packer build does to the cluster, in seconds instead of minutes: creates the VM at
the candidate's vmid named like a build VM (``<name>-build-<refresh id>``: the ownership proof while
it is not a template), with the manifest a build writes for the candidate configuration
(:func:`nixgold.render.manifest.static_manifest` + build id = the refresh id + build time) as its
description, converts it to a template and gives it the candidate's name. The image is the
``NIXGOLD_STANDIN_VARIANT`` stand-in (``good`` passes verify; the broken variants of
``tests/testbed/images/build.py`` fail it). Verify, archive, swap and retention stay real.

``NIXGOLD_STANDIN_IMPORT_DELAY=<seconds>`` waits that long after creating the VM, before the
template conversion (a window for tests that kill nixgold during the build).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from nixgold.proxmox.vms import build_vm_name
from nixgold.refresh.producer import CandidateRequest, Produced
from nixgold.render.manifest import static_manifest

ROOT_ENV = "NIXGOLD_TESTBED_ROOT"
NETNS_ENV = "NIXGOLD_TESTBED_NETNS"
VARIANT_ENV = "NIXGOLD_STANDIN_VARIANT"
DELAY_ENV = "NIXGOLD_STANDIN_IMPORT_DELAY"


def standin(request: CandidateRequest) -> Produced:
    from tests.testbed.bed import Testbed
    from tests.testbed.images import build_image

    env = request.env
    bed = Testbed(root=Path(env[ROOT_ENV]), netns=env[NETNS_ENV], log_fn=lambda msg: None)
    variant = env.get(VARIANT_ENV, "good")
    config = request.config
    vmid = config.template.vmid
    dialect = config.build.dialect if config.build.dialect != "auto" else "plugin"
    manifest = {**static_manifest(config, dialect), "build_id": request.refresh_id, "git_commit": None,
                "build_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "iso": {},
                "note": f"test seam: stand-in image '{variant}'"}
    request.progress.line(f"build (test seam): importing the stand-in image '{variant}' as {vmid}")
    info = build_image(variant, log=lambda msg: None)
    bed.import_image(info, vmid, name=build_vm_name(config.template.name, request.refresh_id),
                     description=json.dumps(manifest, separators=(",", ":")), template=False)
    delay = float(env.get(DELAY_ENV) or 0)
    if delay:
        request.progress.line(f"build (test seam): VM {vmid} created; waiting {delay:g}s before converting it")
        try:
            request.cancel.sleep(delay)
        except BaseException:  # like the Packer build: no VM of an interrupted build is left
            with bed.enter():
                bed.destroy_vm(vmid)
            raise
    with bed.enter():
        prox = bed.root_api()
        node = prox.nodes(bed.node)
        bed._wait(prox, node.qemu(vmid).template.post())
        node.qemu(vmid).config.put(name=config.template.name)
    request.progress.line(f"build (test seam): template {vmid} '{config.template.name}' ready")
    return Produced(vmid=vmid, node=bed.node, name=config.template.name, build_id=request.refresh_id)


SEEDED_VERIFICATION = {"outcome": "passed", "checks": 34, "passed": 29, "at": "2026-01-01T00:00:00Z",
                       "note": "seeded by the test bed, not verified here"}


def seed_candidate(bed: Any, vmid: int, template_vmid: int, name: str, *, build_id: str, digest: str) -> None:
    """What a refresh that built and verified a candidate, then stopped before promoting it, leaves at
    staging vmid ``vmid``: the ``good`` stand-in as a template with the candidate record (step verified,
    a passed verification recorded, ``digest`` its inputs), so the next refresh of the same inputs
    promotes it without building or verifying (tests that need a promotion, not a verify)."""
    from tests.testbed.bed import default_manifest

    record = {"role": "candidate", "id": build_id, "of": template_vmid, "vmid": vmid, "step": "verified",
              "input_digest": digest, "verification": SEEDED_VERIFICATION}
    manifest = {**default_manifest(template_vmid, name, "good", None), "build_id": build_id, "refresh": record}
    bed.import_variant("good", vmid, name=f"{name}-candidate-{build_id.lower()}",
                       description=json.dumps(manifest, separators=(",", ":")))
    with bed.enter():
        bed.root_api().nodes(bed.node).qemu(vmid).config.put(tags="nixgold;nixgold-candidate")


def seed_promoted(bed: Any, vmid: int, name: str, *, build_id: str, tags: str, digest: str = "0" * 64,
                  archive: tuple[int, str] | None = None) -> None:
    """What a first refresh (and, with ``archive`` = (vmid, build id), one before it) leaves: the ``good``
    stand-in at ``vmid`` as the promoted, protected template with a passed verification recorded, so
    tests and benchmarks start from a promoted template without spending a verify on it."""
    from tests.testbed.bed import default_manifest

    def put(at: int, vm_name: str, build: str, record: dict[str, Any], vm_tags: str, protection: int) -> None:
        manifest = {**default_manifest(at, vm_name, "good", None), "build_id": build, "refresh": record}
        bed.import_variant("good", at, name=vm_name, description=json.dumps(manifest, separators=(",", ":")))
        with bed.enter():
            bed.root_api().nodes(bed.node).qemu(at).config.put(tags=vm_tags, protection=protection)

    if archive is not None:
        put(archive[0], f"{name}-{archive[1]}", archive[1],
            {"role": "archive", "id": "seed", "of": vmid, "vmid": archive[0], "step": "archived", "archived_at": "2026-01-01T00:00:00Z",
             "input_digest": "1" * 64, "verification": SEEDED_VERIFICATION}, "nixgold;nixgold-archive", 0)
    put(vmid, name, build_id,
        {"role": "promoted", "id": "seed", "of": vmid, "vmid": vmid, "step": "done", "input_digest": digest,
         "verification": SEEDED_VERIFICATION, "promoted_at": "2026-01-02T00:00:00Z"}, tags, 1)
