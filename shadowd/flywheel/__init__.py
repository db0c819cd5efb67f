"""The data flywheel: annotation queue, labels back, hard-example suites.

``Flywheel`` (hub.py) is the one object the comparator deployment holds;
the rest are its parts: ``AnnotationSink`` over a durable ``Spool`` (and
Kafka), ``ItemPolicy`` and ``Rotation`` before it, ``PairStore`` for label
joins, ``SuiteStore`` for suites; ``Annotator`` (annotate.py) is the on-call
person's side and ``replay`` the offline regression test. See docs/flywheel.md.
"""

from shadowd.flywheel.hub import Flywheel, JoinResult
from shadowd.flywheel.sink import AnnotationSink, build_sink
from shadowd.flywheel.spool import Spool, read_spool

__all__ = ["AnnotationSink", "Flywheel", "JoinResult", "Spool", "build_sink", "read_spool"]
