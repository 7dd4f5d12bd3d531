"""A pool of Ray actors that each build their state once (load the models) and then apply one task at a time.

The driver hands each idle actor one task, so a dead actor loses exactly the task it held; that task goes to
a fresh actor, up to `max_attempts` times, and every result says how many attempts it took.  One actor per
GPU where the cluster has GPUs (each with its share of the CPUs as torch threads), one per CPU elsewhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from certseg.errors import CertSegError

RAY_MISSING = '--engine ray needs Ray: pip install "certseg[scale]"'


@dataclass(frozen=True)
class ClusterSettings:
    address: str | None = None  # None: start a local Ray on this machine; else join this cluster
    workers: int | None = None  # None: one per GPU of the cluster, else one per CPU
    max_attempts: int = 3  # a task whose worker died this often is given up


@dataclass
class TaskResult:
    value: Any  # what `apply` returned; None when every attempt's worker died
    seconds: float | None  # wall time of the successful attempt, on its worker
    worker: str  # host:pid of that worker
    attempts: int


def require_ray():
    try:
        import ray
    except ImportError:
        raise CertSegError(RAY_MISSING) from None
    return ray


class PoolWorker:
    """A Ray actor: `make_state()` once (the models), then `apply(state, task)` per call."""

    def __init__(self, make_state: Callable[[], Any], threads: int):
        import torch

        torch.set_num_threads(threads)  # as many as the actor was given, not every core of the machine
        self.state = make_state()
        self.identity = f"{socket.gethostname()}:{os.getpid()}"

    def run(self, apply: Callable[[Any, Any], Any], task: Any) -> tuple[Any, float, str]:
        started = time.perf_counter()
        value = apply(self.state, task)
        return value, time.perf_counter() - started, self.identity


@contextlib.contextmanager
def connected(cluster: ClusterSettings):
    """Ray, joined at `address` or started here (and stopped again at the end)."""
    ray = require_ray()
    started = False
    if not ray.is_initialized():
        quiet = {"logging_level": logging.ERROR, "log_to_driver": False, "include_dashboard": False}
        try:
            if cluster.address:
                ray.init(address=cluster.address, **quiet)
            else:
                ray.init(num_cpus=os.cpu_count(), **quiet)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise CertSegError(f"--ray-address {cluster.address}: cannot join the cluster ({error})") from None
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def map_on_ray(ray, make_state: Callable[[], Any], apply: Callable[[Any, Any], Any], tasks: Sequence[Any],
               cluster: ClusterSettings, on_result: Callable[[int, TaskResult], None] | None = None) -> list[TaskResult]:
    """apply(state, task) for every task on a pool of actors; results in the tasks' order."""
    if not tasks:
        return []
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    count = min(cluster.workers or gpus or cpus, len(tasks))
    actor = ray.remote(**({"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}))(PoolWorker)
    threads = max(1, cpus // gpus) if gpus else 1

    def new_worker():
        return actor.options(max_restarts=0).remote(make_state, threads)

    idle = [new_worker() for _ in range(count)]
    queue = [(index, 1) for index in range(len(tasks))]
    running: dict = {}  # object ref -> (task index, attempt, actor)
    results: list[TaskResult | None] = [None] * len(tasks)
    try:
        while queue or running:
            while queue and idle:
                index, attempt = queue.pop(0)
                worker = idle.pop()
                running[worker.run.remote(apply, tasks[index])] = (index, attempt, worker)
            (done,), _ = ray.wait(list(running), num_returns=1)
            index, attempt, worker = running.pop(done)
            try:
                value, seconds, identity = ray.get(done)
            except ray.exceptions.RayActorError:  # the worker died holding this task: a fresh one does it again
                idle.append(new_worker())
                if attempt < cluster.max_attempts:
                    queue.append((index, attempt + 1))
                    continue
                result = TaskResult(None, None, "", attempt)
            else:
                idle.append(worker)
                result = TaskResult(value, seconds, identity, attempt)
            results[index] = result
            if on_result:
                on_result(index, result)
    finally:
        for worker in idle + [entry[2] for entry in running.values()]:
            with contextlib.suppress(Exception):
                ray.kill(worker)
    return results
