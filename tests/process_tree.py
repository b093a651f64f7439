"""Killing a CLI under test together with the local Ray it started, as a crash would."""

from __future__ import annotations

import os
import signal
import subprocess

import psutil


def descendants(proc: subprocess.Popen) -> list[psutil.Process]:
    """The processes ``proc`` has started so far (Ray's raylet, GCS and workers among them)."""
    return psutil.Process(proc.pid).children(recursive=True)


def kill_tree(proc: subprocess.Popen, family: list[psutil.Process]) -> None:
    """SIGKILL ``proc``'s process group, then every process of ``family`` by pid (Ray processes leave the
    group), and wait until all are gone, so nothing of the killed run writes afterwards."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group has already exited
    proc.wait(timeout=30)
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)
