"""Workers' samples to the master, on the messages locust already sends.

A worker adds its new samples to every stats report (``report_to_master``, every 3 s); the master
merges them when the report arrives (``worker_report``). Locust's own end of a headless run gives
the workers' last report 0.5 s after "quit" (on a loaded machine it can miss), so when the master
stops the test it first asks every worker to stop its users (``cachestack_stop``, a custom message)
and waits until each has sent a report marked final: the samples of the last seconds reach the
master in the same message as locust's own stats for them, so both keep counting the same requests.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import gevent
import locust.runners

from loadtests.workload.samples import Collector

STOP_MESSAGE = "cachestack_stop"
SAMPLES_KEY = "cachestack_samples"
FINAL_KEY = "cachestack_final"
FINAL_WAIT_MARGIN_S = 30.0  # beyond --stop-timeout: a worker's next report comes within 3 s, slower when loaded

log = logging.getLogger("cachestack.loadtests")


def tolerate_stalls(seconds: int) -> None:
    """Count a worker as missing only after ``seconds`` without a heartbeat (locust: 3). On a loaded
    machine a worker process can be descheduled for several seconds; with locust's 3 s the master
    marks every worker missing at once and stops the test ("The last worker went missing"), which
    ended runs with 0 requests here. locust reads this module constant at every heartbeat."""
    locust.runners.HEARTBEAT_LIVENESS = max(int(seconds), 3)


class WorkerShipper:
    """On a worker: puts new samples into each stats report; stops its users when the master asks."""

    def __init__(self, environment: Any, collector: Collector) -> None:
        self.collector = collector
        self.stopped = False
        environment.events.report_to_master.add_listener(self.on_report)
        # concurrent: stopping users may wait --stop-timeout, the message loop must not
        environment.runner.register_message(STOP_MESSAGE, self.on_stop, concurrent=True)

    def on_report(self, client_id: str, data: dict[str, Any]) -> None:
        final = self.stopped  # read before draining: every sample of a stopped worker is in this report
        data[SAMPLES_KEY] = self.collector.drain()
        if final:
            data[FINAL_KEY] = True

    def on_stop(self, environment: Any, msg: Any) -> None:
        environment.runner.stop()
        self.stopped = True


class MasterMerger:
    """On the master: merges workers' samples; at the stop, waits for every worker's final report."""

    def __init__(self, environment: Any, collector: Collector) -> None:
        self.environment = environment
        self.collector = collector
        self.samples_by_worker: Counter[str] = Counter()
        self.final: set[str] = set()
        environment.events.worker_report.add_listener(self.on_report)
        environment.events.test_start.add_listener(self.on_test_start)
        environment.events.test_stopping.add_listener(self.on_test_stopping)

    def on_test_start(self, **_: Any) -> None:
        self.samples_by_worker.clear()
        self.final.clear()

    def on_report(self, client_id: str, data: dict[str, Any]) -> None:
        rows = data.get(SAMPLES_KEY) or []
        self.collector.merge(rows)
        self.samples_by_worker[client_id] += len(rows)
        if data.get(FINAL_KEY):
            self.final.add(client_id)

    def on_test_stopping(self, environment: Any, **_: Any) -> None:
        runner = environment.runner
        workers = [c.id for c in runner.clients.all]
        for worker in workers:
            runner.send_message(STOP_MESSAGE, client_id=worker)
        deadline = time.monotonic() + (environment.stop_timeout or 0.0) + FINAL_WAIT_MARGIN_S
        while not self.final.issuperset(workers) and time.monotonic() < deadline:
            gevent.sleep(0.2)
        missing = sorted(set(workers) - self.final)
        if missing:
            log.warning("no final report from %d of %d workers: their last samples are not counted",
                        len(missing), len(workers))

    def meta(self) -> dict[str, Any]:
        """For summary.json: how many workers sent samples, how many each, whose final report came."""
        return {"workers": len(self.samples_by_worker),
                "samples_by_worker": sorted(self.samples_by_worker.values(), reverse=True),
                "workers_final_report": len(self.final)}
