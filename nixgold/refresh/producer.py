"""The build phase of a refresh: something that makes the candidate template at the staging vmid.

The real producer is `invoke build-template` (:func:`nixgold.build.builder.run_build`) run with the
candidate's configuration: ``template.vmid`` = the staging vmid, the name
``<name>-candidate-<refresh id>``, the tag ``nixgold-candidate`` (never the promoted template's name
or tags: consumers must not find a candidate by them), and the build id = the refresh id.

**Test seam** (like ``NIXGOLD_RENDER_OVERLAY``, not a product feature): ``NIXGOLD_REFRESH_PRODUCER=
module:function`` replaces the build phase only. The function receives a :class:`CandidateRequest`
and returns a :class:`Produced` for a template it made at ``request.config.template.vmid``, named
and described like a build's (the manifest of :func:`nixgold.render.manifest.static_manifest` for
the candidate configuration, ``build_id`` = the refresh id). A loud warning is printed and the
candidate's record says ``"test_producer": "<spec>"``. The test bed's producer
(``tests.testbed.refresh_producer:standin``) imports a stand-in image; verify, archive, swap and
retention stay real.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

from nixgold.config.credentials import Credentials
from nixgold.config.model import Config
from nixgold.errors import ConfigError, ConfigIssue
from nixgold.progress import Progress
from nixgold.refresh.state import CANDIDATE_TAG, candidate_name
from nixgold.secrets import Redactor
from nixgold.signals import Cancel

PRODUCER_ENV = "NIXGOLD_REFRESH_PRODUCER"


@dataclass(frozen=True)
class CandidateRequest:
    config: Config  # the candidate's: template.vmid = staging vmid, candidate name and tag
    refresh_id: str
    input_digest: str
    creds: Credentials
    progress: Progress
    out: TextIO
    env: Mapping[str, str]
    redactor: Redactor
    cancel: Cancel


@dataclass
class Produced:
    vmid: int
    node: str
    name: str
    build_id: str
    build_dir: Path | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)


Producer = Callable[[CandidateRequest], Produced]


def candidate_config(config: Config, vmid: int, refresh_id: str) -> Config:
    """The user's config placed at ``vmid`` under the candidate's name and tag; its hash stays the user's
    (so the rendered guest files are the very ones `invoke render` gives for the user's config)."""
    return dataclasses.replace(config, origin_hash=config.config_hash(), template=dataclasses.replace(
        config.template, vmid=vmid, name=candidate_name(config.template.name, refresh_id), tags=(CANDIDATE_TAG,)))


def packer_producer(request: CandidateRequest) -> Produced:
    """`invoke build-template` for the candidate (preflight, Packer, template check)."""
    from nixgold.build.builder import BuildOptions, run_build

    result = run_build(request.config, request.creds, BuildOptions(build_id=request.refresh_id),
                       progress=request.progress, out=request.out, env=request.env, redactor=request.redactor,
                       cancel=request.cancel)
    return Produced(vmid=result.vmid, node=result.node, name=result.name, build_id=result.build_id,
                    build_dir=result.build_dir, stages=result.stages)


def producer_from_env(env: Mapping[str, str]) -> tuple[Producer, str | None]:
    """The test seam's producer when ``$NIXGOLD_REFRESH_PRODUCER`` names one, else the real build."""
    spec = env.get(PRODUCER_ENV)
    if not spec:
        return packer_producer, None
    module_name, _, function = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(ConfigIssue(PRODUCER_ENV, spec, f"module:function of a candidate producer ({exc})")) from None
    return fn, spec
