"""Sizing a local pool by measurement: idle CPUs from /proc/stat, threads per worker, what the pool says."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modeconnect.experiments import executors
from modeconnect.experiments.executors import ProcessPoolExecutor, available_cpus, idle_cpus, threads_per_worker


def test_idle_cpus_is_a_count_of_this_process_cpus():
    idle = idle_cpus(0.2)
    if idle is None:
        pytest.skip("no /proc/stat here")
    assert 0.0 <= idle <= available_cpus() + 0.05


def test_a_spinning_process_is_seen_as_busy():
    if idle_cpus(0.05) is None:
        pytest.skip("no /proc/stat here")
    quiet = idle_cpus(0.3)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = idle_cpus(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    # the spinner takes most of a core (other load on the machine can only lower both numbers)
    assert busy < quiet - 0.5 or busy < available_cpus() - 0.5


def test_threads_per_worker_shares_the_idle_cpus(monkeypatch):
    monkeypatch.setattr(executors, "available_cpus", lambda: 8)
    assert threads_per_worker(2) == 4
    assert threads_per_worker(2, idle=8.0) == 4
    assert threads_per_worker(2, idle=3.6) == 2  # round(3.6) = 4 idle CPUs, 2 each
    assert threads_per_worker(4, idle=1.2) == 1  # never below one thread
    assert threads_per_worker(1, idle=20.0) == 8  # never above the CPUs this process may use


def test_the_pool_says_when_its_workers_will_compete(monkeypatch):
    monkeypatch.setattr(executors, "available_cpus", lambda: 2)
    pool = ProcessPoolExecutor(2, 1, idle=0.9)
    try:
        text = pool.describe()
    finally:
        pool.close()
    assert "0.9 of 2 CPUs idle" in text and "compete" in text
    pool = ProcessPoolExecutor(2, 1, idle=1.9)
    try:
        assert "compete" not in pool.describe()
    finally:
        pool.close()
