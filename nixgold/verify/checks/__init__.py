"""The nixgold check suite: what `invoke verify` proves about a template and its clones.

* :func:`template_checks` -- pure pre-checks over the template's Proxmox config;
* :func:`run_checks` -- the guest checks (``test_*.py`` here, plain pytest + testinfra functions
  taking ``host``) run over SSH against booted clones, in a child process per run (one per clone
  as it comes up, one across the clones); :func:`start_checks` starts such a child before its
  clones are up (:class:`CheckChild`: it collects the suite meanwhile, then runs on ``go``).

The guest checks also run without nixgold (see README.md)::

    pytest --hosts=paramiko://nixgold@10.0.0.5 --ssh-identity-file=key nixgold/verify/checks/
"""

from __future__ import annotations

from nixgold.verify.checks.model import CheckContext, CheckResult, CloneTarget
from nixgold.verify.checks.runner import (
    AGENT_COMMANDS,
    CHECKS_DIR,
    AgentAnswers,
    CheckChild,
    CheckRun,
    CheckSuiteError,
    run_checks,
    start_checks,
)
from nixgold.verify.checks.template import BLOCKING_TEMPLATE_CHECKS, TEMPLATE_CHECKS, template_checks

__all__ = [
    "AGENT_COMMANDS",
    "AgentAnswers",
    "BLOCKING_TEMPLATE_CHECKS",
    "CheckChild",
    "CheckRun",
    "CHECKS_DIR",
    "TEMPLATE_CHECKS",
    "CheckContext",
    "CheckResult",
    "CheckSuiteError",
    "CloneTarget",
    "run_checks",
    "start_checks",
    "template_checks",
]
