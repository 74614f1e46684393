"""The update log on local storage: a chain of segments, one winner per position, truncation."""

from __future__ import annotations

import threading

import pytest

from qadwh_ray import storage
from qadwh_ray.index.update_log import LogEntry, LogTruncated, UpdateLog


def _put(i, code="ab12"):
    return LogEntry(seq=0, op="put", id=i, code=code, labels=[1], checkpoint="c" * 64)


def test_append_read_and_truncate(tmp_path):
    log = UpdateLog(str(tmp_path))
    assert log.end() == 0 and log.read(0) == ([], 0)
    a = log.append([_put(5), LogEntry(0, "delete", 7)])
    b = log.append([_put(6)])
    assert [e.seq for e in a + b] == [1, 2, 3] and log.end() == 3 and log.head_hint() == 3
    entries, pos = log.read(0)
    assert pos == 3 and [(e.seq, e.op, e.id) for e in entries] == [(1, "put", 5), (2, "delete", 7), (3, "put", 6)]
    assert log.read(2) == (entries[2:], 3) and log.read(0, upto=2) == (entries[:2], 2)
    with pytest.raises(ValueError, match="no segment starts at 2"):
        log.read(1)  # not a segment end: a reader never silently skips a change
    sha = log.put_image(b"png bytes")
    assert log.read_image(sha) == b"png bytes" and log.put_image(b"png bytes") == sha
    with pytest.raises(ValueError, match="not a segment end"):
        log.truncate(1)
    assert log.truncate(2) == 1 and log.truncated_position() == 2
    assert log.read(2) == (entries[2:], 3)
    with pytest.raises(LogTruncated, match="folded"):
        log.read(0)
    assert [e.seq for e in log.append([_put(8)])] == [4]


def test_a_stale_head_is_walked_past(tmp_path):
    log = UpdateLog(str(tmp_path))
    log.append([_put(1)])
    log.append([_put(2)])
    storage.write_bytes(storage.join(log.root, "HEAD"), b'{"position": 1}')  # a writer died before HEAD
    assert log.end() == 2 and [e.id for e in log.read(0)[0]] == [1, 2]
    assert log.append([_put(3)])[0].seq == 3


def test_concurrent_writers_never_share_a_position(tmp_path):
    writers = [UpdateLog(str(tmp_path)) for _ in range(4)]  # separate objects, as in separate replicas
    got: list = []
    lock = threading.Lock()

    def write(w, base):
        for j in range(15):
            out = w.append([_put(base + j)])
            with lock:
                got.extend(out)

    ts = [threading.Thread(target=write, args=(w, 1000 * n)) for n, w in enumerate(writers)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    entries, pos = UpdateLog(str(tmp_path)).read(0)
    assert pos == 60 and [e.seq for e in entries] == list(range(1, 61))
    assert sorted(e.id for e in entries) == sorted(e.id for e in got)  # every acknowledged change, once


def test_damaged_entries_are_named(tmp_path):
    log = UpdateLog(str(tmp_path))
    storage.write_bytes(log.segment_uri(1), b'{"seq": 1, "op": "put", "id": 3}\n')
    with pytest.raises(ValueError, match="damaged update-log entry"):
        log.read(0)
