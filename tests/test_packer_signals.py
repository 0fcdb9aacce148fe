"""PackerRunner.build and the signal token (nixgold.signals.Cancel) with a stand-in ``packer`` that
prints machine-readable lines every 0.3 s: a signal that came before Packer started is forwarded
once it runs; a Packer that keeps printing and ignores SIGINT is killed at the cleanup deadline; the
second Ctrl-C only warns and the third kills. No guest, a few seconds each."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from nixgold.packer.runner import PackerRunner
from nixgold.secrets import Redactor
from nixgold.signals import Cancel

FAKE = r'''#!{python}
import os, signal, sys, time
RECORD = {record!r}
STUBBORN = {stubborn!r}

def on_sigint(signum, frame):
    with open(RECORD, "a") as fh:
        fh.write("SIGINT\n")
    if not STUBBORN:  # like Packer: say so, clean up, exit 1
        print(f"{{int(time.time())}},,ui,error,Build 'x' errored: build was cancelled", flush=True)
        time.sleep(0.3)
        sys.exit(1)

signal.signal(signal.SIGINT, on_sigint)
n = 0
while True:  # steady output, like a Packer streaming a provisioner's log
    n += 1
    print(f"{{int(time.time())}},x,ui,say,==> x: still working ({{n}})", flush=True)
    time.sleep(0.3)
'''


def fake_packer(tmp_path: Path, *, stubborn: bool) -> tuple[Path, Path]:
    record = tmp_path / "signals.txt"
    record.touch()
    path = tmp_path / "packer"
    path.write_text(FAKE.format(python=sys.executable, record=str(record), stubborn=stubborn))
    path.chmod(0o755)
    return path, record


def build(packer: Path, tmp_path: Path, cancel: Cancel, said: list[str], **kw) -> tuple[object, float]:
    runner = PackerRunner(str(packer), env={"PATH": "/usr/bin:/bin"}, redact=Redactor(), cwd=tmp_path)
    t0 = time.monotonic()
    outcome = runner.build(tmp_path, dialect="bundled", cancel=cancel, say=said.append, **kw)
    return outcome, time.monotonic() - t0


def signal_later(cancel: Cancel, *delays: float) -> threading.Thread:
    def send() -> None:
        for delay in delays:
            time.sleep(delay)
            cancel.signal("SIGINT")

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_a_signal_that_came_before_packer_started_is_forwarded(tmp_path):
    packer, record = fake_packer(tmp_path, stubborn=False)
    cancel, said = Cancel(), []
    cancel.signal("SIGINT")  # e.g. Ctrl-C while `packer init` ran
    outcome, seconds = build(packer, tmp_path, cancel, said)
    assert seconds < 15  # not left building: the fake runs forever unless interrupted
    assert outcome.interrupted_by == "SIGINT" and not outcome.killed and outcome.exit_status == 1
    assert record.read_text() == "SIGINT\n"
    assert said[0].startswith("SIGINT received: asking Packer to stop")


def test_a_packer_that_keeps_printing_is_killed_at_the_cleanup_deadline(tmp_path):
    packer, record = fake_packer(tmp_path, stubborn=True)
    cancel, said = Cancel(), []
    signal_later(cancel, 1.0)
    outcome, seconds = build(packer, tmp_path, cancel, said, cleanup_timeout=2.0)
    assert outcome.killed and outcome.interrupted_by == "SIGINT"
    assert seconds < 10  # 1 s + the 2 s deadline, although a line came every 0.3 s
    assert record.read_text() == "SIGINT\n"
    assert said[-1] == "Packer did not finish its cleanup within 2s: killing it"


def test_the_second_ctrl_c_warns_and_the_third_kills(tmp_path):
    packer, record = fake_packer(tmp_path, stubborn=True)
    cancel, said = Cancel(), []
    signal_later(cancel, 1.0, 1.0, 1.0)
    outcome, seconds = build(packer, tmp_path, cancel, said, cleanup_timeout=900.0)
    assert outcome.killed and seconds < 15
    assert record.read_text() == "SIGINT\n"  # forwarded once; the second is only a warning
    assert [s.split(":")[0] for s in said] == ["SIGINT received", "SIGINT again", "SIGINT"]
    assert said[1].endswith("once more kills Packer (nixgold then destroys the VM through the API)")
    assert said[2] == "SIGINT: killing Packer"
