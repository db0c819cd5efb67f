"""The data flywheel: annotation queue, labels back, hard-example suites.

``Flywheel`` (hub.py) is the one object the comparator deployment holds;
the rest are its parts: ``AnnotationSink`` over a durable ``Spool`` (and
Kafka), ``ItemPolicy`` and ``Rotation`` before it, ``PairStore`` for label
joins, ``SuiteStore`` for suites; ``Annotator`` (annotate.py) is the on-call
person's side and ``replay`` the offline regression test. See docs/flywheel.md.
"""
