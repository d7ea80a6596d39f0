"""parallel.run: results in the pieces' order, serial and spread over processes alike."""

from __future__ import annotations

import functools
import os

import pytest

from microqa import parallel


def _square_and_pid(k: int) -> tuple[int, int]:
    return k * k, os.getpid()


# jobs=2 starts a pool of worker processes: an integration test
@pytest.mark.parametrize("jobs", ["1", pytest.param("2", marks=pytest.mark.integration)])
def test_results_come_back_in_the_pieces_order(monkeypatch, jobs):
    monkeypatch.setenv("MICROQA_JOBS", jobs)
    results = parallel.run([functools.partial(_square_and_pid, k) for k in range(40)])
    assert [value for value, _ in results] == [k * k for k in range(40)]
    ran_here = {pid for _, pid in results} == {os.getpid()}
    assert ran_here == (jobs == "1")  # one process allowed: nothing is spawned


def test_no_pieces_is_an_empty_list(monkeypatch):
    monkeypatch.setenv("MICROQA_JOBS", "2")
    assert parallel.run([]) == []


def test_pytest_workers_keep_the_studys_pools_serial():
    # make test-unit runs a worker per core; a second layer of processes would oversubscribe
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("not a pytest-xdist worker")
    assert os.environ.get("MICROQA_JOBS") == "1"
