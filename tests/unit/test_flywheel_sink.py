"""AnnotationSink without a broker.

The Kafka producer is replaced here by ``ScriptedTransport``, a fake that
acks, fails or hangs on command: unit tests start no broker (the real broker
runs in tests/integration/test_kafka_sink.py). What is under test is the
sink's own logic: spool first, commit only what was acked, replay in order,
never block ``submit``.
"""

import errno
import itertools
import threading
import time

from prometheus_client import CollectorRegistry

from shadowd.config import parse_config
from shadowd.errors import DeliveryError
from shadowd.flywheel.sink import AnnotationSink, build_sink
from shadowd.flywheel.spool import SegmentFile, Spool, read_spool
from shadowd.flywheel.transports import build_transport
from shadowd.flywheel.transports.base import SendResult
from shadowd.observe.metrics import ShadowdMetrics
from shadowd.records import AnnotationItem


def item(i: int) -> AnnotationItem:
    return AnnotationItem(request_id=f"req-{i}", reason="divergent", priority=float(i), created_ts=1000.0 + i)


class ScriptedTransport:
    """Fake broker: records what it received; ``fail_next`` errors, ``gate`` blocks sends."""

    send_timeout_s = 30.0

    def __init__(self):
        self.received: list[str] = []
        self.fail_next = 0
        self.ack_only = None  # ack only the first k of the next batch, then error
        self.poison_key = None
        self.gate = threading.Event()
        self.gate.set()
        self.closed = False

    def send(self, records, timeout_s):
        self.gate.wait()
        if self.closed:  # a force-closed client fails what it had in flight
            return SendResult(0, DeliveryError("ConnectionError: closed"))
        if self.fail_next:
            self.fail_next -= 1
            return SendResult(0, DeliveryError("TimeoutError: broker unreachable"))
        for i, r in enumerate(records):
            if r.key == self.poison_key:
                self.received += [x.key for x in records[:i]]
                return SendResult(i, DeliveryError("MessageSizeTooLargeError", poison=True))
        if self.ack_only is not None:
            k, self.ack_only = self.ack_only, None
            self.received += [r.key for r in records[:k]]
            return SendResult(k, DeliveryError("TimeoutError: lost connection mid-batch"))
        self.received += [r.key for r in records]
        return SendResult(len(records))

    def close(self):
        self.closed = True
        self.gate.set()


def sample(metrics, outcome):
    return metrics.registry.get_sample_value("shadowd_annotation_items_total", {"outcome": outcome}) or 0.0


def test_embedded_sink_spools_every_item_in_order(tmp_path):
    metrics = ShadowdMetrics(CollectorRegistry())
    sink = AnnotationSink(Spool(tmp_path), metrics=metrics, batch_items=7).start()
    for i in range(100):
        sink.submit(item(i))
    stats = sink.close(timeout_s=5)
    assert (stats.queued, stats.spooled, stats.delivered, stats.failed, stats.pending) == (100, 100, 0, 0, 100)
    recs = read_spool(tmp_path)
    assert [r.key for r in recs] == [f"req-{i}" for i in range(100)]
    assert AnnotationItem.model_validate(recs[42].value) == item(42)
    assert sample(metrics, "queued") == 100 and sample(metrics, "spooled") == 100
    assert metrics.registry.get_sample_value("shadowd_spool_items", {"lane": "review", "shard": "0"}) == 100


def test_delivers_in_order_and_commits_only_acked(tmp_path):
    metrics = ShadowdMetrics(CollectorRegistry())
    tr = ScriptedTransport()
    tr.fail_next = 3
    tr.ack_only = 5
    sink = AnnotationSink(
        Spool(tmp_path, segment_items=10), tr, metrics, batch_items=20, retry_backoff_s=(0.001, 0.002)
    ).start()
    for i in range(60):
        sink.submit(item(i))
    assert sink.flush(timeout_s=10)
    stats = sink.close(timeout_s=5)
    # at least once, in order; the partly acked batch is not re-sent from its start
    assert tr.received == [f"req-{i}" for i in range(60)]
    assert stats.delivered == 60 and stats.pending == 0 and stats.failed == 0
    assert sample(metrics, "delivered") == 60
    assert metrics.registry.get_sample_value("shadowd_spool_items", {"lane": "review", "shard": "0"}) == 0


def test_poison_record_goes_to_dead_letter_and_the_rest_flows(tmp_path):
    metrics = ShadowdMetrics(CollectorRegistry())
    tr = ScriptedTransport()
    tr.poison_key = "req-3"
    sink = AnnotationSink(Spool(tmp_path), tr, metrics, retry_backoff_s=(0.001, 0.002)).start()
    for i in range(6):
        sink.submit(item(i))
    assert sink.flush(timeout_s=10)
    stats = sink.close(timeout_s=5)
    assert tr.received == ["req-0", "req-1", "req-2", "req-4", "req-5"]
    assert stats.failed == 1 and stats.delivered == 5
    dead = (tmp_path / "dead-letter.jsonl").read_text().splitlines()
    assert len(dead) == 1 and '"key": "req-3"' in dead[0]


def test_submit_never_waits_for_a_hung_broker_and_nothing_queued_is_lost(tmp_path):
    tr = ScriptedTransport()
    tr.gate.clear()  # the broker hangs
    metrics = ShadowdMetrics(CollectorRegistry())
    sink = AnnotationSink(Spool(tmp_path), tr, metrics, max_buffered_items=50, batch_items=10).start()
    for i in range(2000):
        sink.submit(item(i))  # a submit that waited on the hung broker would never return
    assert sink.flush(timeout_s=0.5) is False  # nothing can be delivered
    stats = sink.close(timeout_s=0.5)  # force-closes the hung transport
    assert tr.closed
    # What the bounded buffer took is on disk; what it could not take is counted, never waited for.
    dropped = stats.dropped.get("buffer_full", 0)
    assert stats.queued + dropped == 2000 and stats.failed == dropped
    assert metrics.registry.get_sample_value(
        "shadowd_annotation_items_dropped_total", {"lane": "review", "reason": "buffer_full"}
    ) == (dropped or None)
    spooled = [r.key for r in read_spool(tmp_path)]
    assert len(spooled) == stats.queued == stats.spooled and len(set(spooled)) == len(spooled)


class StalledDisk(SegmentFile):
    """A disk whose writes hang until ``release`` is set."""

    release = threading.Event()

    def write(self, data):
        self.release.wait()
        return super().write(data)


def test_submit_never_waits_for_a_stalled_disk(tmp_path):
    """The old sink made the caller (the hub's event loop) append to the spool itself when the
    buffer was full: with a stalled disk, submit hung with it."""
    StalledDisk.release.clear()
    sink = AnnotationSink(Spool(tmp_path, open_segment=StalledDisk), max_buffered_items=20, batch_items=5).start()
    for i in range(200):
        sink.submit(item(i))  # the spooler is stuck in a write; every submit still returns
    stats = sink.stats()
    assert stats.queued + stats.dropped["buffer_full"] == 200 and stats.queued <= 25
    StalledDisk.release.set()
    assert sink.flush(timeout_s=30)
    stats = sink.close(timeout_s=5)
    # Exactly the accepted items, in submit order (which ones were dropped depends on when the
    # spooler took its first batch before the write stalled).
    order = [int(r.key.removeprefix("req-")) for r in read_spool(tmp_path)]
    assert len(order) == stats.queued and order == sorted(set(order))


def test_restart_replays_what_the_last_run_did_not_deliver(tmp_path):
    tr = ScriptedTransport()
    tr.gate.clear()
    sink = AnnotationSink(Spool(tmp_path), tr).start()
    for i in range(30):
        sink.submit(item(i))
    sink.close(timeout_s=0.3)
    assert tr.received == []

    tr2 = ScriptedTransport()
    sink = AnnotationSink(Spool(tmp_path), tr2).start()
    sink.submit(item(30))
    assert sink.flush(timeout_s=30)
    sink.close(timeout_s=5)
    assert tr2.received == [f"req-{i}" for i in range(31)]


def test_build_sink_without_kafka_is_spool_only(tmp_path):
    cfg = parse_config(
        {
            "task": "classification",
            "data_dir": str(tmp_path),
            "models": {"production": {"name": "p", "kind": "python", "target": "m:f", "input_shape": [2]}},
        }
    )
    transport = build_transport(cfg.annotations.sink, cfg.data_dir)
    assert transport.name == "spool" and transport.producer("review") is None  # the spool is the queue
    sink = build_sink(cfg, transport.producer("review"))
    sink.submit(item(1))
    assert sink.flush(timeout_s=5)  # nothing to deliver to: spooled is done
    stats = sink.close(timeout_s=5)
    assert stats.spooled == 1 and stats.delivered == 0 and stats.pending == 1
    assert [r.key for r in read_spool(tmp_path / "spool")] == ["req-1"]
    sink.submit(item(2))  # after close: counted, not raised into the comparator
    assert sink.stats().failed == 1


def test_fatal_errors_keep_items_and_back_off_to_the_longest_wait(tmp_path):
    class Unauthorized:
        send_timeout_s = 30.0

        def __init__(self):
            self.calls = 0

        def send(self, records, timeout_s):
            self.calls += 1
            return SendResult(0, DeliveryError("TopicAuthorizationFailedError: denied", retriable=False))

        def close(self):
            pass

    waits = []
    gate = threading.Event()

    def sleep(s):
        waits.append(s)
        if len(waits) >= 3:
            gate.set()
        time.sleep(0.001)

    tr = Unauthorized()
    sink = AnnotationSink(Spool(tmp_path), tr, retry_backoff_s=(0.01, 7.0), sleep=sleep).start()
    sink.submit(item(1))
    assert gate.wait(5)
    stats = sink.close(timeout_s=1)
    assert waits[:3] == [7.0, 7.0, 7.0]
    assert (
        stats.pending == 1 and stats.failed == 0 and stats.last_error.startswith("fatal: TopicAuthorizationFailedError")
    )


def test_kafka_error_classes_map_to_poison_not_retriable_or_retry():
    from kafka import errors as ke

    from shadowd.flywheel.transports.kafka import delivery_error

    def flags(err, of_a_record=True):
        e = delivery_error(err, of_a_record)
        return {"poison": e.poison, "retriable": e.retriable}

    assert flags(ke.MessageSizeTooLargeError()) == {"poison": True, "retriable": True}
    assert flags(ke.MessageSizeTooLargeError(), of_a_record=False) == {"poison": False, "retriable": True}
    assert flags(ke.TopicAuthorizationFailedError()) == {"poison": False, "retriable": False}
    assert flags(ke.KafkaTimeoutError()) == {"poison": False, "retriable": True}
    assert flags(ke.UnknownProducerIdError()) == {"poison": False, "retriable": True}  # a fresh producer cures it


# --- the spooler survives what reaches it; a full disk is a state, not a loss (issue 12) ---


def _deep(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def test_an_item_the_json_writer_refuses_is_counted_and_the_spooler_lives_on(tmp_path):
    """On main one such item (features nested 300 deep) killed the shadowd-spooler thread: the
    rest of its batch and everything after was never spooled, flush never completed, failed=0."""
    metrics = ShadowdMetrics(CollectorRegistry())
    sink = AnnotationSink(Spool(tmp_path), metrics=metrics, batch_items=10).start()
    poison = item(1).model_copy(update={"features": {"a": _deep(300)}})
    for it in (item(0), poison, item(2)):
        sink.submit(it)
    assert sink.flush(timeout_s=30)
    sink.submit(item(3))
    assert sink.flush(timeout_s=30)
    stats = sink.close(timeout_s=5)
    assert [r.key for r in read_spool(tmp_path)] == ["req-0", "req-2", "req-3"]
    assert stats.failed == 1 and stats.dropped == {"unserializable": 1}
    dropped = metrics.registry.get_sample_value(
        "shadowd_annotation_items_dropped_total", {"lane": "review", "reason": "unserializable"}
    )
    assert dropped == 1


class FullDisk(SegmentFile):
    """A disk that is full while ``full`` is set: part of a write lands, then ENOSPC."""

    full = threading.Event()

    def write(self, data):
        if self.full.is_set():
            super().write(bytes(data[:7]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def _wait_for(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_a_full_disk_pauses_queuing_drops_by_reason_and_resumes_by_itself(tmp_path):
    FullDisk.full.clear()
    metrics = ShadowdMetrics(CollectorRegistry())
    spool = Spool(tmp_path, open_segment=FullDisk)
    sink = AnnotationSink(spool, None, metrics, max_buffered_items=5, batch_items=3, retry_backoff_s=(0.01, 0.05))
    sink.start()
    sink.submit(item(0))
    assert sink.flush(timeout_s=30)

    def gauge(name, **labels):
        shard = {"shard": "0"} if name.startswith("shadowd_spool") else {}  # the spool's gauges, per hub shard
        return metrics.registry.get_sample_value(name, {"lane": "review", **shard, **labels})

    FullDisk.full.set()
    sink.submit(item(1))
    _wait_for(lambda: sink.stats().paused == "disk_full")
    assert gauge("shadowd_spool_paused", reason="disk_full") == 1
    assert gauge("shadowd_spool_paused", reason="spool_full") == 0
    for i in range(2, 20):
        sink.submit(item(i))  # never raises, never waits: the buffer takes 5, the rest is counted
    stats = sink.stats()
    assert stats.dropped == {"disk_full": 13} and stats.failed == 13
    assert gauge("shadowd_annotation_items_dropped_total", reason="disk_full") == stats.dropped["disk_full"]
    assert len(spool.pending(100)) == 1  # nothing half-written meanwhile

    FullDisk.full.clear()  # space comes back: no one has to do anything
    assert sink.flush(timeout_s=30)
    assert sink.stats().paused is None and gauge("shadowd_spool_paused", reason="disk_full") == 0
    sink.submit(item(99))
    assert sink.flush(timeout_s=30)
    stats = sink.close(timeout_s=5)
    keys = [r.key for r in read_spool(tmp_path)]
    assert keys[:2] == ["req-0", "req-1"] and keys[-1] == "req-99"
    assert len(keys) == stats.spooled == stats.queued and len(keys) + stats.failed == 21
    assert gauge("shadowd_spool_bytes") == sum(p.stat().st_size for p in tmp_path.glob("seg-*.jsonl"))


def test_the_byte_cap_pauses_queuing_until_the_rotation_frees_space(tmp_path):
    metrics = ShadowdMetrics(CollectorRegistry())
    one = len(f'{{"seq":1,"key":"req-0","value":{item(0).model_dump_json()}}}\n')
    spool = Spool(tmp_path, segment_items=2, max_bytes=4 * one + 50)
    sink = AnnotationSink(spool, None, metrics, max_buffered_items=4, batch_items=1, retry_backoff_s=(0.01, 0.05))
    sink.start()
    for i in range(4):
        sink.submit(item(i))
    assert sink.flush(timeout_s=30)
    sink.submit(item(4))
    _wait_for(lambda: sink.stats().paused == "spool_full")
    cap = metrics.registry.get_sample_value("shadowd_spool_max_bytes", {"lane": "review", "shard": "0"})
    assert cap == 4 * one + 50
    spool.commit(2)  # annotators handled two items: their segment is deleted
    assert sink.flush(timeout_s=30) and sink.stats().paused is None
    sink.close(timeout_s=5)
    assert [r.key for r in read_spool(tmp_path)] == ["req-2", "req-3", "req-4"]


def test_build_sink_caps_the_spool_from_the_config(tmp_path):
    cfg = parse_config(
        {
            "task": "classification",
            "data_dir": str(tmp_path),
            "models": {"production": {"name": "p", "kind": "python", "target": "m:f", "input_shape": [2]}},
            "annotations": {"spool_max_bytes": 2_000_000},
        }
    )
    sink = build_sink(cfg, None)
    assert sink.spool.max_bytes == 2_000_000
    sink.close(timeout_s=5)


def test_an_unreadable_spool_record_pauses_delivery_but_never_ends_the_sender(tmp_path):
    """On main a record pending() could not parse (a torn append) raised out of the sender
    thread: delivery stopped for good, until a restart."""
    spool = Spool(tmp_path)
    spool.append([(it.request_id, it.model_dump_json()) for it in (item(0), item(1))])
    seg = next(tmp_path.glob("seg-*.jsonl"))
    good = seg.read_bytes()
    seg.write_bytes(b"x" * (len(good) - 1) + b"\n")  # same length: the index still counts two records
    tr = ScriptedTransport()
    sink = AnnotationSink(spool, tr, retry_backoff_s=(0.01, 0.01), sleep=lambda s: time.sleep(0.01)).start()
    _wait_for(lambda: (sink.stats().last_error or "").startswith("spool read failed"))
    assert tr.received == []
    seg.write_bytes(good)  # the disk is readable again
    assert sink.flush(timeout_s=30)
    sink.close(timeout_s=5)
    assert tr.received == ["req-0", "req-1"]


class BuggyTransport(ScriptedTransport):
    """A transport whose send raises (a bug, a library error it did not expect) a few times."""

    def __init__(self, raises: int):
        super().__init__()
        self.raises = raises

    def send(self, records, timeout_s):
        if self.raises:
            self.raises -= 1
            raise KeyError("unexpected")
        return super().send(records, timeout_s)


def test_a_sender_that_raises_is_restarted_counted_and_delivers_everything(tmp_path):
    """Before supervision, an exception out of the transport ended the sender thread for good:
    items piled up in the spool, and nothing but their age said so."""
    metrics = ShadowdMetrics(CollectorRegistry())
    tr = BuggyTransport(raises=3)
    sink = AnnotationSink(Spool(tmp_path), tr, metrics, batch_items=10).start()
    for i in range(25):
        sink.submit(item(i))
    assert sink.flush(timeout_s=30)
    sink.close(timeout_s=5)
    assert tr.received == [f"req-{i}" for i in range(25)]
    restarts = metrics.registry.get_sample_value("shadowd_thread_restarts_total", {"thread": "sender-review"})
    assert restarts == 3


def test_supervised_loop_restarts_with_backoff_and_stops_when_told():
    from shadowd.observe.supervise import supervised

    metrics = ShadowdMetrics(CollectorRegistry())
    stop = threading.Event()
    runs = []

    def loop():
        runs.append(time.monotonic())
        if len(runs) < 4:
            raise RuntimeError("boom")
        stop.wait()  # the fourth run works until told to stop

    t = supervised("probe", loop, stop, metrics, min_backoff_s=0.01, max_backoff_s=0.05)
    deadline = time.monotonic() + 10
    while len(runs) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(runs) == 4 and t.is_alive()
    assert metrics.registry.get_sample_value("shadowd_thread_restarts_total", {"thread": "probe"}) == 3
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert gaps[0] >= 0.01 and gaps[2] >= 0.04  # the backoff doubles, capped
    stop.set()
    t.join(5)
    assert not t.is_alive()
