"""Metrics of processes on other nodes reach the lead hub's /metrics as files (shadowd/observe/metrics.py):
a process's own files, cut to their bytes in use, are kept beside the lead's and aggregated with them;
anything that is not a whole prometheus-client file is refused, so one bad file cannot fail every scrape."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.mmap_dict import MmapedDict

from shadowd.observe.metrics import MAX_REMOTE_ORIGINS, own_metric_files, store_remote_files


def _counter_file(folder, pid: int, value: float, name: str = "shadowd_requests_total") -> None:
    d = MmapedDict(str(folder / f"counter_{pid}.db"))
    key = json.dumps([name.removesuffix("_total"), name, {"role": "candidate"}, "Calls."], sort_keys=True)
    d.write_value(key, value, 0.0)
    d.close()


def _scrape(folder) -> str:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(folder))
    return generate_latest(registry).decode()


def test_another_nodes_files_are_aggregated_with_the_leads(tmp_path):
    remote, lead = tmp_path / "remote", tmp_path / "lead"
    remote.mkdir()
    lead.mkdir()
    _counter_file(remote, 4242, 7.0)
    _counter_file(remote, 9999, 100.0)  # another process on that node: not this one's to send
    _counter_file(lead, 11, 5.0)
    files = own_metric_files(remote, 4242)
    assert list(files) == ["counter_4242.db"] and len(files["counter_4242.db"]) < 4096  # not the 1 MiB file
    assert store_remote_files(lead, "abc123-4242", files) == 1
    assert 'shadowd_requests_total{role="candidate"} 12.0' in _scrape(lead)
    _counter_file(remote, 4242, 9.0)  # a later send replaces the earlier copy
    store_remote_files(lead, "abc123-4242", own_metric_files(remote, 4242))
    assert 'shadowd_requests_total{role="candidate"} 14.0' in _scrape(lead)


@pytest.mark.parametrize(
    "name, mangle",
    [
        ("counter_1.db", lambda b: b[:-5]),  # cut short
        ("counter_1.db", lambda b: b"\xff\xff\x00\x00" + b[4:]),  # a header claiming other sizes
        ("counter_1.db", lambda b: b[:8] + b"\x00" * (len(b) - 8)),  # entries not a metric key
        ("gauge_1.db", lambda b: b),  # a gauge without its mode: the collector would fail on the name
        ("evil_1.db", lambda b: b),
        ("counter_1.db\n", lambda b: b),
        ("../counter_1.db", lambda b: b),
    ],
)
def test_anything_but_a_whole_file_is_refused_and_scrapes_keep_working(tmp_path, name, mangle):
    remote, lead = tmp_path / "remote", tmp_path / "lead"
    remote.mkdir()
    lead.mkdir()
    _counter_file(remote, 1, 3.0)
    _counter_file(lead, 11, 5.0)
    good = own_metric_files(remote, 1)["counter_1.db"]
    assert store_remote_files(lead, "abc-1", {name: mangle(good)}) == 0
    assert sorted(p.name for p in lead.iterdir()) == ["counter_11.db"]
    assert 'shadowd_requests_total{role="candidate"} 5.0' in _scrape(lead)


def test_bad_origins_and_too_many_origins_are_refused(tmp_path):
    remote, lead = tmp_path / "remote", tmp_path / "lead"
    remote.mkdir()
    lead.mkdir()
    _counter_file(remote, 1, 1.0)
    files = own_metric_files(remote, 1)
    for origin in ("abc-1\n", "../x-1", "ABC-1", "abc"):
        with pytest.raises(ValueError, match="bad metrics origin"):
            store_remote_files(lead, origin, files)
    for i in range(MAX_REMOTE_ORIGINS):
        (lead / f"counter_abc-{i}.db").write_bytes(b"")
    with pytest.raises(ValueError, match="remote processes' metrics kept"):
        store_remote_files(lead, "abc-99999", files)
    assert store_remote_files(lead, "abc-5", files) == 1  # one already kept is still refreshed
