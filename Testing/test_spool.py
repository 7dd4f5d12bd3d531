"""The listener's state machine (certseg.pacs.spool, Listener.work_once) on a real spool, with objects arriving
at the worst moments: during a certification and during a send.  The certify and send callables here are the
test's own, so the moments are exact; the real pipeline and network are in test_listener.py."""

import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from certseg.limits import declared_pixel_bytes, inflates_beyond
from certseg.pacs.guard import ReceiveBudget
from certseg.pacs.listener import Listener, ListenerSettings
from certseg.pacs.spool import StudyState


@dataclass
class Examined:
    path: Path
    message: str
    status: str
    result: Path | None


class Node:
    """A Listener whose certify writes a result per object and whose send may fail or receive meanwhile."""

    def __init__(self, folder: Path, **settings):
        self.log, self.sent, self.certified = [], [], []
        self.during_certify = self.during_send = None
        self.send_failures = 0
        self.listener = Listener(ListenerSettings("CERTSEG", 11112, folder / "spool", idle_s=10, **settings),
                                 self.certify, self.send, self.log.append)

    def certify(self, objects: Path, results: Path, decoding=None):
        if self.during_certify:
            self.during_certify(), setattr(self, "during_certify", None)
        examined = []
        for path in sorted(objects.glob("*.dcm")):
            kind = path.read_bytes()
            if kind == b"CT":
                examined.append(Examined(path, "modality CT is not a radiograph", "skipped", None))
            elif kind.startswith(b"BAD"):
                examined.append(Examined(path, "refused by feature spectrum distance 40.1, accepted at most 28.6", "failed", None))
            else:
                result = results / path.stem
                if not result.exists():
                    result.mkdir(parents=True)
                    (result / "seg.dcm").write_bytes(kind)
                    self.certified.append(kind)
                examined.append(Examined(path, "certified", "certified", result))
        return examined

    def send(self, paths, record):
        if self.during_send:
            self.during_send(), setattr(self, "during_send", None)
        if self.send_failures:
            self.send_failures -= 1
            raise ConnectionError("destination down")
        self.sent += [p.read_bytes() for p in paths]

    def receive(self, sop: str, content: bytes = b"CR", study: str = "1.2.3"):
        self.listener.spool.add(study, sop, content, {"aet": "PEER", "address": "127.0.0.1"})

    def events(self, name):
        return [r for r in self.log if r["event"] == name]


def later(seconds):
    import time

    return time.time() + seconds


def test_an_object_received_during_certification_waits_for_its_own(tmp_path):
    node = Node(tmp_path)
    node.receive("1.1")
    node.during_certify = lambda: node.receive("1.2", b"CR-2")
    node.listener.work_once(later(11))
    assert node.certified == [b"CR"] and node.sent == [b"CR"]
    key = node.listener.spool.keys()[0]
    assert node.listener.spool.record(key).state == StudyState.RECEIVING  # 1.2 waits, it was not claimed
    node.listener.work_once(later(22))
    assert node.certified == [b"CR", b"CR-2"] and node.sent == [b"CR", b"CR-2"]
    assert node.listener.spool.record(key).state == StudyState.SENT and node.listener.spool.size_bytes == 0


def test_an_object_received_during_a_send_is_never_deleted_uncertified(tmp_path):
    node = Node(tmp_path)
    node.receive("1.1")
    node.during_send = lambda: node.receive("1.2", b"CR-2")
    node.listener.work_once(later(11))
    key = node.listener.spool.keys()[0]
    assert node.listener.spool.has_incoming(key)  # the send's success did not take it
    node.listener.work_once(later(22))
    assert node.sent == [b"CR", b"CR-2"]


def test_failures_and_foreign_objects_leave_the_count_with_their_reason(tmp_path):
    node = Node(tmp_path)
    for sop, kind in (("1.1", b"CT"), ("1.2", b"BAD"), ("1.3", b"CR")):
        node.receive(sop, kind)
    node.listener.work_once(later(11))
    assert node.listener.spool.size_bytes == 0
    assert [r["reason"] for r in node.events("failed")] == ["refused by feature spectrum distance 40.1, accepted at most 28.6"]
    assert [r["reason"] for r in node.events("ignored")] == ["modality CT is not a radiograph"]
    record = node.listener.spool.record(node.listener.spool.keys()[0])
    assert sorted(item["status"] for item in record.not_certified) == ["failed", "skipped"]
    assert len(list((tmp_path / "spool" / "failed").rglob("*.dcm"))) == 1
    assert node.listener.spool.prune_failed(0, later(1)) and not list((tmp_path / "spool" / "failed").iterdir())


def test_retries_back_off_up_to_the_cap_then_wait_for_a_restart(tmp_path):
    node = Node(tmp_path, first_retry_s=2, max_retry_interval_s=5, retry_window_s=30)
    node.send_failures = 100
    node.receive("1.1")
    now = later(11)
    node.listener.work_once(now)
    for _ in range(20):
        now += 5
        node.listener.work_once(now)
    delays = [r["in_s"] for r in node.events("retry")]
    assert delays[:3] == [2, 4, 5] and max(delays) == 5
    assert len(node.events("unsent")) == 1 and node.sent == []
    key = node.listener.spool.keys()[0]
    assert node.listener.spool.record(key).state == StudyState.UNSENT
    node.send_failures = 0
    restarted = Listener(node.listener.settings, node.certify, node.send, node.log.append)
    assert node.events("resumed")
    restarted.work_once(now + 1)
    assert node.sent == [b"CR"] and node.certified == [b"CR"]  # sent after the restart, certified once


def test_a_claimed_object_left_by_a_crash_is_certified_again_without_recomputing(tmp_path):
    node = Node(tmp_path)
    node.receive("1.1")
    key = node.listener.spool.keys()[0]
    node.listener.spool.claim(key)  # the worker took it, then the process died
    restarted = Listener(node.listener.settings, node.certify, node.send, node.log.append)
    restarted.work_once(later(0))  # claimed objects do not wait out the idle time again
    assert node.certified == [b"CR"] and node.sent == [b"CR"]


@pytest.mark.parametrize("size", [10, 2**20, 2**20 + 1, 50 * 2**20])
def test_inflated_size_is_found_in_bounded_memory_and_agrees_with_zlib(size):
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = deflater.compress(bytes(size)) + deflater.flush()
    assert inflates_beyond(stream, 2**20) == (len(zlib.decompress(stream, -zlib.MAX_WBITS)) > 2**20)


def test_declared_pixel_bytes_follow_the_header():
    import pydicom

    header = pydicom.Dataset()
    header.Rows, header.Columns, header.BitsAllocated, header.SamplesPerPixel, header.NumberOfFrames = 100, 50, 12, 3, 4
    assert declared_pixel_bytes(header) == 100 * 50 * 2 * 3 * 4


def test_the_receive_budget_holds_per_association_and_in_all():
    budget = ReceiveBudget(per_association=100, in_all=150)
    first, second = object(), object()
    assert budget.add(first, 90) is None and budget.add(second, 50) is None
    assert "in flight across associations" in budget.add(second, 20)
    budget.release(second)
    assert "for one object" in budget.add(first, 20)
    budget.release(first)
    assert budget.held() == 0


def test_an_unexpected_error_sets_the_objects_aside_and_the_node_goes_on(tmp_path):
    node = Node(tmp_path)
    node.receive("1.1", study="1.2.3")
    node.receive("1.1", study="1.2.4")
    failing = node.certify

    def certify_or_crash(objects, results, decoding):
        if node.listener.spool.keys()[0] in str(objects):
            raise KeyError("a bug")
        return failing(objects, results, decoding)

    node.listener.certify = certify_or_crash
    node.listener.work_once(later(11))
    assert [r["reason"] for r in node.events("failed")] == ["internal error: KeyError: 'a bug'"]
    assert node.sent == [b"CR"]  # the other study went on
    assert len(list((tmp_path / "spool" / "failed").rglob("*.dcm"))) == 1


class _Killed(BaseException):
    """What the worker sees of its process dying (out of memory, SIGKILL): nothing after it runs."""


def test_an_object_whose_decoding_keeps_killing_the_node_is_set_aside_not_retried_for_ever(tmp_path):
    """Claimed objects are certified again after a restart: one whose codec kills the node (out of memory) would
    kill it at every restart.  A node stopped while it runs the models is no fault of the image: never set aside."""
    node = Node(tmp_path)
    node.receive("1.1", b"CR")
    node.receive("1.2", b"CR-2")
    calls = []

    def dies_decoding_the_first(objects, results, decoding):
        first = sorted(objects.glob("*.dcm"))[0]
        calls.append(first.name)
        decoding(first, True)
        raise _Killed()

    def dies_in_the_models(objects, results, decoding):
        for path in sorted(objects.glob("*.dcm")):
            decoding(path, True)
            decoding(path, False)
        raise _Killed()

    for certify in (dies_in_the_models, dies_in_the_models, dies_in_the_models):
        with pytest.raises(_Killed):
            Listener(node.listener.settings, certify, node.send, node.log.append).work_once(later(11))
    assert not node.events("failed")  # stopped three times while the models ran: nothing set aside
    for _ in range(2):  # the node dies decoding the same object, twice; each time it is restarted
        with pytest.raises(_Killed):
            Listener(node.listener.settings, dies_decoding_the_first, node.send, node.log.append).work_once(later(11))
    restarted = Listener(node.listener.settings, node.certify, node.send, node.log.append)
    restarted.work_once(later(11))
    failed = node.events("failed")
    assert len(failed) == 1 and "decoding it ended the node 2 times" in failed[0]["reason"]
    assert len(list((tmp_path / "spool" / "failed").rglob("*.dcm"))) == 1
    assert len(node.certified) == 1  # the other object was certified


def test_failed_objects_count_against_the_queue_and_are_capped_oldest_first(tmp_path):
    """failed/ was outside the queue's count and kept for 7 days whatever its size (42 MB under a 20 MB limit)."""
    node = Node(tmp_path, max_queue_bytes=4000, max_failed_bytes=1000)
    for study in range(6):
        node.receive("1.1", b"BAD" + bytes(400), study=f"1.2.{study}")
    node.listener.work_once(later(11))
    failed = tmp_path / "spool" / "failed"
    held = sum(p.stat().st_size for p in failed.rglob("*.dcm"))
    assert 0 < held <= 1000
    assert node.listener.spool.queued_bytes == held  # counted against the queue limit
    assert any("over the 1000-byte limit" in r["reason"] for r in node.events("pruned"))


def test_finished_studies_are_pruned_and_the_worker_visits_only_active_ones(tmp_path):
    node = Node(tmp_path, finished_retention_s=3600)
    for study in range(50):
        node.receive("1.1", study=f"1.3.{study}")
    node.listener.work_once(later(11))
    assert len(node.sent) == 50 and not node.listener.spool.active
    reads = []
    record = node.listener.spool.record
    node.listener.spool.record = lambda key: reads.append(key) or record(key)
    node.listener.work_once(later(12))  # used to reread every study's record each second
    assert reads == []
    node.receive("1.1", b"CR-again", study="1.3.7")
    assert len(node.listener.spool.active) == 1
    node.listener.spool.record = record
    node.listener.work_once(later(3600 + 60))  # the study that came back is certified, sent, and old too by then
    assert len(node.sent) == 51 and len(node.events("pruned")) == 50
    assert node.listener.spool.keys() == [] and not list((tmp_path / "spool" / "results").iterdir())


def test_staging_left_by_a_killed_process_is_swept_at_start(tmp_path):
    node = Node(tmp_path)
    node.receive("1.1")
    key = node.listener.spool.keys()[0]
    stale_object = node.listener.spool.incoming(key) / "0123.partial"
    stale_object.write_bytes(b"half an object")
    stale_result = node.listener.spool.results(key) / "1.2" / ".3.4.abcd.partial"
    stale_result.mkdir(parents=True)
    (stale_result / "seg.dcm").write_bytes(b"half a SEG")
    restarted = Listener(node.listener.settings, node.certify, node.send, node.log.append)
    assert not stale_object.exists() and not stale_result.exists()
    assert node.events("swept") and restarted.spool.has_incoming(key)
