"""Proxmox VE API simulator for the nixgold test bed.

Serves ``https://<ip>:8006/api2/json`` like pveproxy (auth, privilege checks,
schema validation against the PVE 9.1 API schema fixture, PVE's error shapes,
UPID tasks) and runs every started VM as a real ``qemu-system-x86_64 -accel
tcg`` guest inside the test bed's network namespace.

Modules: ``schema``/``formats`` (validation), ``auth`` (tokens, tickets,
ACLs), ``tasks``/``upid``, ``storage`` (dir storages, linked clones),
``vmconfig`` (config files), ``cloudinit`` (NoCloud drive), ``runtime``
(QEMU processes), ``qmp``/``qga`` (monitor and guest-agent clients),
``faults`` (fault injection), ``node`` (operations), ``handlers/*`` (API
endpoints), ``server``/``control`` (HTTPS front end, ``/_sim`` API),
``client`` (:class:`SimAdmin`).
"""
from .client import SimAdmin, SimAdminError
from .config import SimConfig

__all__ = ["SimAdmin", "SimAdminError", "SimConfig"]
