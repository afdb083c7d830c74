"""cachestack's locust workloads: what each cache layer answers, how fast, with which tokens avoided and
how many false hits (loadtests/README.md "Locust workloads" explains every option and field).

    .venv/bin/locust -f loadtests/locustfile.py --headless --scenario faq -u 16 -r 16 -t 60s \
        --host http://127.0.0.1:8080

Scenarios (``--scenario``): faq, shared_prefix, chat_stream, mixed. At the end the master (or the single
process) writes summary.json, summary.png, locust's CSVs and HTML report into ``--summary-dir``
(default loadtests/out/<run id>/) and exits non-zero on any failed request or a false-hit rate above
``--max-false-hit-rate``. Distributed runs (``--processes N``, or ``--master`` / ``--worker``) ship each
worker's samples to the master with locust's stats reports; the master merges them.
"""

from __future__ import annotations

import functools
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import gevent
from locust import FastHttpUser, events, task
from locust.runners import MasterRunner, WorkerRunner
from locust.user.wait_time import constant_throughput

from loadtests.workload import gateway_metrics
from loadtests.workload.client import send_json, send_stream
from loadtests.workload.distributed import MasterMerger, WorkerShipper, tolerate_stalls
from loadtests.workload.pool import DEFAULT_POOL, Pool, ZipfSampler, load_pairs, load_pool
from loadtests.workload.report import format_summary, write_report
from loadtests.workload.samples import Collector
from loadtests.workload.scenarios import SCENARIOS, WARM_RUN_ID, Settings, Workload, run_seed

COLLECTOR = Collector()
MERGER: MasterMerger | None = None


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    g = parser  # (an argument group would not take locust's include_in_web_ui)
    g.add_argument("--scenario", choices=sorted(SCENARIOS), default="mixed", help="workload (default mixed)")
    g.add_argument("--summary-dir", default="", help="where summary.json, the PNG, CSVs and HTML go "
                   "(default loadtests/out/<run id>/)")
    g.add_argument("--run-id", default="", help="names the run; default: UTC time + random suffix")
    g.add_argument("--warm", action="store_true", default=False,
                   help="reuse the cache of earlier --warm runs (default: every run starts cold)")
    g.add_argument("--rate", type=float, default=0.0,
                   help="open loop: scenario steps per second over all users (0: closed loop, no wait)")
    g.add_argument("--pool", default=str(DEFAULT_POOL), help="faq intents, JSON Lines (loadtests/workload/pool.py)")
    g.add_argument("--pairs", default="", help="labelled pair file to build the pool from instead (read in place)")
    g.add_argument("--pairs-limit", type=int, default=1000, help="intents taken from --pairs")
    g.add_argument("--zipf-s", type=float, default=1.0, help="Zipf exponent of intent popularity")
    g.add_argument("--model", default=os.environ.get("CACHESTACK_MODEL", "smollm2"))
    g.add_argument("--api-key", default=os.environ.get("CACHESTACK_API_KEY", ""), include_in_web_ui=False,
                   help="Bearer key (env CACHESTACK_API_KEY)")
    g.add_argument("--namespace", default="", help="X-Cache-Namespace to send (a configured namespace)")
    g.add_argument("--max-tokens", type=int, default=64)
    g.add_argument("--max-false-hit-rate", type=float, default=0.01, help="fail the run above this")
    g.add_argument("--max-failures", type=int, default=0, help="fail the run with more failed requests")
    g.add_argument("--worker-silence-s", type=int, default=30, include_in_web_ui=False,
                   help="master: seconds without a heartbeat before a worker counts as missing (locust: 3)")


def _opts(environment: Any) -> Any:
    return environment.parsed_options


@functools.lru_cache(maxsize=4)
def _pool(pool: str, pairs: str, pairs_limit: int) -> Pool:
    return load_pairs(pairs, pairs_limit) if pairs else load_pool(pool)


def pool_for(opts: Any) -> Pool:
    return _pool(opts.pool, opts.pairs, opts.pairs_limit)


@events.init.add_listener
def _init(environment: Any, **_: Any) -> None:
    opts = _opts(environment)
    if opts is None:
        return
    global MERGER
    if isinstance(environment.runner, WorkerRunner):
        WorkerShipper(environment, COLLECTOR)
        return
    # master or single process: these become part of the options sent to workers with every spawn
    opts.run_id = opts.run_id or time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    opts.cache_seed = run_seed(WARM_RUN_ID if opts.warm else opts.run_id)
    opts.total_users = opts.num_users or 1
    if isinstance(environment.runner, MasterRunner):
        MERGER = MasterMerger(environment, COLLECTOR)
        tolerate_stalls(opts.worker_silence_s)


@events.test_start.add_listener
def _test_start(environment: Any, **_: Any) -> None:
    if not isinstance(environment.runner, WorkerRunner):
        COLLECTOR.reset()
        environment.cachestack_started = time.time()
        # in its own greenlet: test_start runs before any user spawns, and a slow /metrics would eat the run time
        environment.cachestack_counters = gevent.spawn(gateway_metrics.scrape, environment.host or "")


@events.quitting.add_listener
def _quitting(environment: Any, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or _opts(environment) is None:
        return
    opts = _opts(environment)
    out = Path(opts.summary_dir) if opts.summary_dir else REPO / "loadtests" / "out" / opts.run_id
    started = getattr(environment, "cachestack_started", None)
    doc, problems = write_report(environment, COLLECTOR.samples, out, opts, pool_for(opts) if _needs_pool(opts) else None,
                                 time.time() - started if started else None,
                                 {**(MERGER.meta() if MERGER is not None else {"workers": 0}),
                                  "gateway_counters": gateway_metrics.delta(
                                      _value(getattr(environment, "cachestack_counters", None)),
                                      gateway_metrics.scrape(environment.host or ""))})
    print(format_summary(doc))
    print(f"cachestack: summary in {out}/summary.json; {'PASSED' if not problems else 'FAILED: ' + '; '.join(problems)}")
    environment.process_exit_code = 1 if problems else 0


def _value(greenlet: Any) -> Any:
    """The start's counters if their scrape has finished (None otherwise: no difference is reported)."""
    return greenlet.value if greenlet is not None and greenlet.ready() else None


def _needs_pool(opts: Any) -> bool:
    return any(k in ("faq", "completion") for k in SCENARIOS[opts.scenario])


class CachestackUser(FastHttpUser):
    """One simulated client; each task run is one step of the chosen scenario."""

    host = "http://127.0.0.1:8080"
    network_timeout = 600.0  # a miss on a loaded CPU vLLM can take minutes; the gateway's read timeout is 600 s
    connection_timeout = 10.0
    _pace: Any = None

    def wait_time(self) -> float:
        return self._pace(self) if self._pace is not None else 0.0

    def on_start(self) -> None:
        opts = _opts(self.environment)
        self._pace = constant_throughput(opts.rate / max(1, opts.total_users)) if opts.rate > 0 else None
        sampler = ZipfSampler(pool_for(opts), opts.zipf_s) if _needs_pool(opts) else None
        settings = Settings(model=opts.model, seed=opts.cache_seed, namespace=opts.namespace or None,
                            max_tokens=opts.max_tokens)
        self.workload = Workload(opts.scenario, settings, sampler, random.Random())
        if opts.api_key:
            self.client.auth_header = f"Bearer {opts.api_key}"

    @task
    def step(self) -> None:
        kind = self.workload.next_kind()
        if kind != "chat_stream":
            sample, _ = send_json(self, getattr(self.workload, kind)())
            COLLECTOR.add(sample)
            return
        opener, follow_ups = self.workload.conversation()
        history = [{"role": "user", "content": opener}]
        for turn in [opener, *follow_ups]:
            if turn is not opener:
                history.append({"role": "user", "content": turn})
            sample, text = send_stream(self, self.workload.chat_turn(list(history)))
            COLLECTOR.add(sample)
            if sample.error:
                return
            history.append({"role": "assistant", "content": text})
