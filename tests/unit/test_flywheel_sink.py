"""AnnotationSink without a broker.

The Kafka producer is replaced here by ``ScriptedTransport``, a fake that
acks, fails or hangs on command: unit tests start no broker (the real broker
runs in tests/integration/test_kafka_sink.py). What is under test is the
sink's own logic: spool first, commit only what was acked, replay in order,
never block ``submit``.
"""

import threading
import time

from prometheus_client import CollectorRegistry

from shadowd.config import parse_config
from shadowd.errors import DeliveryError
from shadowd.flywheel.sink import AnnotationSink, build_sink
from shadowd.flywheel.spool import Spool, read_spool
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
    assert metrics.registry.get_sample_value("shadowd_spool_items", {"lane": "review"}) == 100


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
    assert metrics.registry.get_sample_value("shadowd_spool_items", {"lane": "review"}) == 0


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


def test_submit_never_waits_for_a_hung_broker_and_nothing_is_lost(tmp_path):
    tr = ScriptedTransport()
    tr.gate.clear()  # the broker hangs
    sink = AnnotationSink(Spool(tmp_path), tr, max_buffered_items=50, batch_items=10).start()
    worst_s = 0.0
    for i in range(2000):
        t0 = time.perf_counter()
        sink.submit(item(i))
        worst_s = max(worst_s, time.perf_counter() - t0)
    assert sink.flush(timeout_s=0.5) is False  # nothing can be delivered
    stats = sink.close(timeout_s=0.5)  # force-closes the hung transport
    assert tr.closed
    assert stats.queued == 2000
    # all 2000 are on disk: spooled by the spooler, by submit on overflow, or by close
    assert sorted(r.key for r in read_spool(tmp_path)) == sorted(f"req-{i}" for i in range(2000))
    # worst case is an overflow append (one fsync), far below any broker timeout
    assert worst_s < 2.0, worst_s  # bounded; a submit that waited on the hung broker would never return


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
    assert sink.flush(timeout_s=10)
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
