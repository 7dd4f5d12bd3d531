"""A hostile peer against the real `certseg listen` on loopback: traversal in every UID, bombs, idle sockets,
garbage, floods, unknown AEs, TLS.  Every loop is bounded; every refusal must be a log line; the node must keep
serving a good sender throughout, and nothing may be written outside the spool."""

import contextlib
import socket
import struct
import subprocess
import time

import pydicom
import pytest
from pydicom.uid import generate_uid

from support.dicom_files import declared_pixel_bomb, traversal_uids, write_cr_with_spacing, write_deflate_bomb
from support.listener import RunningListener, c_store, idle_sockets
from support.tools import require_tool


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """One listener for the attacks that do not need a fresh one; its destination is down (nothing is sent)."""
    folder = tmp_path_factory.mktemp("node")
    listener = RunningListener(folder, None, "--max-object-mb", "1", "--acse-timeout", "2", "--pdu-timeout", "3",
                               "--idle", "600")
    yield listener
    listener.stop()


@pytest.fixture
def good_cr(tmp_path):
    return write_cr_with_spacing(tmp_path / "good.dcm", "calibrated", seed=61)


def fresh(path):
    dataset = pydicom.dcmread(path)
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    return dataset


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_traversal_in_every_uid_is_refused_and_nothing_leaves_the_spool(node, good_cr, tmp_path, keyword):
    escaped = tmp_path / "escaped"
    for case, value in traversal_uids(escaped).items():
        dataset = fresh(good_cr)
        setattr(dataset, keyword, value)
        if keyword == "SOPInstanceUID":
            dataset.file_meta.MediaStorageSOPInstanceUID = value
        before = len(node.records())
        status = c_store(node.port, dataset)
        refusal = node.wait_for(lambda r: r["event"] in ("refused", "aborted"), after=before, timeout_s=10)
        if keyword == "SOPInstanceUID" and status is None:  # it is also the command's Affected SOP Instance UID,
            assert refusal["event"] == "aborted", case     # which pynetdicom itself refuses when it is too long
            continue
        assert status == 0xC210, case
        assert f"{keyword} " in refusal["reason"] and "is not a DICOM UID" in refusal["reason"], case
    assert not escaped.exists() and not list(tmp_path.glob("escaped*"))
    assert c_store(node.port, fresh(good_cr)) == 0x0000  # still serving
    spool = node.folder / "spool"
    assert all(p.resolve().is_relative_to(spool.resolve()) for p in spool.rglob("*"))


def test_a_deflate_bomb_is_refused_before_it_is_inflated(node, small_cr, tmp_path):
    from pynetdicom import _config

    bomb = write_deflate_bomb(small_cr, tmp_path / "bomb.dcm", 600 * 2**20)  # ~0.6 MB that inflates to 600 MiB
    assert bomb.stat().st_size < 2**20  # under the node's 1 MiB object limit as received
    before_mb, before = node.peak_memory_mb(), len(node.records())
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are, never inflated here
    try:
        status = c_store(node.port, bomb, syntax=pydicom.uid.DeflatedExplicitVRLittleEndian)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    assert status == 0xA700
    refusal = node.wait_for(lambda r: r["event"] == "refused", after=before, timeout_s=10)
    assert "Deflated object inflates to more than" in refusal["reason"]
    assert node.peak_memory_mb() - before_mb < 100  # inflating it whole would have cost 600 MiB


def test_pixel_data_declared_far_larger_than_sent_is_refused(node, small_cr):
    before = len(node.records())
    bomb = declared_pixel_bomb(small_cr)  # 60000 x 60000 x 16 bit = 7.2 GB declared, 64 bytes sent
    assert c_store(node.port, bomb, syntax=pydicom.uid.RLELossless) == 0xA700
    refusal = node.wait_for(lambda r: r["event"] == "refused", after=before, timeout_s=10)
    assert "pixel data declared as 7200000000 bytes" in refusal["reason"]


def test_idle_sockets_cannot_shut_the_node_and_each_dropped_one_is_logged(node, good_cr):
    """Twenty silent connections from one address, reopened as soon as they close (the default limit used to be
    ten associations for 30 s); a sender elsewhere is served throughout."""
    before = len(node.records())
    with idle_sockets(node.port, 20, source="127.0.0.2") as opened:
        deadline = time.monotonic() + 10
        while len(opened) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        for _ in range(3):
            assert c_store(node.port, fresh(good_cr)) == 0x0000
            time.sleep(1.5)
    dropped = [r for r in node.records()[before:] if r["event"] == "dropped" and r["address"] == "127.0.0.2"]
    assert any("already open from this address" in r["reason"] for r in dropped)
    assert any("no valid association request within the ACSE timeout" in r["reason"] for r in dropped)


def test_garbage_truncation_oversized_pdus_and_floods_are_dropped_and_logged(node, good_cr):
    before = len(node.records())
    payloads = {
        "garbage": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "truncated": struct.pack(">BBL", 0x01, 0, 68) + b"\x00\x01" + b"\x00" * 10,  # an A-ASSOCIATE-RQ cut short
        "oversized": struct.pack(">BBL", 0x04, 0, 2**31),  # a P-DATA header announcing 2 GiB
    }
    for payload in payloads.values():
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as connection:
            connection.sendall(payload)
            connection.settimeout(8)
            try:
                while connection.recv(4096):  # the node must close it (bounded by the timeout)
                    pass
            except (TimeoutError, ConnectionResetError):
                pass
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    flood = AE(ae_title="STORESCU")
    flood.add_requested_context(Verification)
    answered = 0
    for _ in range(40):  # a burst of associations, one after another
        association = flood.associate("127.0.0.1", node.port, ae_title="CERTSEG")
        if association.is_established:
            answered += int(association.send_c_echo().Status == 0x0000)
            association.release()
    assert answered == 40
    assert c_store(node.port, fresh(good_cr)) == 0x0000
    records = node.records()[before:]
    assert any(r["event"] == "dropped" and "PDU of 2147483648 bytes" in r["reason"] for r in records)
    assert sum(r["event"] in ("dropped", "aborted") for r in records) >= 3


def test_unknown_calling_aes_are_rejected_with_a_log_line(node, good_cr):
    before = len(node.records())
    assert c_store(node.port, fresh(good_cr), aet="INTRUDER") is None
    rejected = node.wait_for(lambda r: r["event"] == "rejected", after=before, timeout_s=10)
    assert rejected["reason"] == "calling AE title 'INTRUDER' is not allowed" and rejected["address"] == "127.0.0.1"


def test_echoscu_answers_and_the_default_bind_is_loopback_only(node):
    require_tool("echoscu")
    echo = subprocess.run(["echoscu", "-aet", "STORESCU", "-aec", "CERTSEG", "127.0.0.1", str(node.port)],
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stderr
    with pytest.raises(OSError):  # 127.0.0.2 is this machine too, but not the address the node listens on
        socket.create_connection(("127.0.0.2", node.port), timeout=5).close()
    assert node.records()[0]["bind"] == "127.0.0.1"


def make_certificates(folder):
    """A CA, a server certificate for 127.0.0.1 and a client certificate it signed, and a self-signed rogue."""
    def openssl(*args):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=CertSeg test CA",
            "-keyout", folder / "ca.key", "-out", folder / "ca.pem")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", folder / f"{name}.key",
                "-out", folder / f"{name}.csr")
        (folder / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", folder / f"{name}.csr", "-CA", folder / "ca.pem", "-CAkey", folder / "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", folder / f"{name}.ext", "-out", folder / f"{name}.pem")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=rogue",
            "-keyout", folder / "rogue.key", "-out", folder / "rogue.pem")
    return folder


def echo_over_tls(port, folder, cert, ca="ca.pem"):
    from certseg.pacs.config import DimseAddress, PacsServer
    from certseg.pacs.dimse import DimsePacs
    from certseg.pacs.tls import TlsFiles

    files = TlsFiles(folder / f"{cert}.pem", folder / f"{cert}.key", folder / ca) if cert else TlsFiles(ca=folder / ca)
    server = PacsServer("node", dimse=DimseAddress("127.0.0.1", port, "CERTSEG", files), calling_aet="STORESCU")
    DimsePacs(server, timeout_s=10).echo()


def test_dicom_tls_verifies_peers_both_ways_and_a_silent_peer_cannot_stall_the_handshakes(tmp_path):
    from certseg.errors import CertSegError

    certificates = make_certificates(tmp_path)
    listener = RunningListener(tmp_path, None, "--tls-cert", certificates / "server.pem", "--tls-key",
                               certificates / "server.key", "--tls-ca", certificates / "ca.pem", "--acse-timeout", "3")
    try:
        with socket.create_connection(("127.0.0.1", listener.port)):  # silent: never starts its handshake
            echo_over_tls(listener.port, certificates, "client")  # served meanwhile
        before = len(listener.records())
        with pytest.raises(CertSegError):
            echo_over_tls(listener.port, certificates, "rogue")  # a certificate the CA did not sign
        with pytest.raises(CertSegError):
            echo_over_tls(listener.port, certificates, None)  # no client certificate at all
        with pytest.raises(CertSegError):
            echo_over_tls(listener.port, certificates, "client", ca="rogue.pem")  # we do not trust the node
        assert c_store(listener.port, pydicom.dcmread(write_cr_with_spacing(tmp_path / "cr.dcm", "calibrated"))) is None
        listener.wait_for(lambda r: r["event"] == "dropped" and "TLS handshake failed" in r["reason"], after=before,
                          timeout_s=10)
        dropped = [r for r in listener.records()[before:] if r["event"] == "dropped"]
        assert sum("TLS handshake failed" in r["reason"] for r in dropped) >= 3
        echo_over_tls(listener.port, certificates, "client")
        assert listener.records()[0]["tls"] is True
    finally:
        listener.stop()


def test_half_a_pdu_from_many_addresses_cannot_lock_out_a_real_sender(tmp_path, good_cr):
    """36 connections from 9 loopback addresses, each sending the 6-byte header of an A-ASSOCIATE-RQ and then
    nothing, reopened whenever the node closes one: more than the node's 32 slots.  pynetdicom alone waits for the
    rest of such a PDU for ever; the node must time the read out, log it, and keep serving a sender elsewhere."""
    listener = RunningListener(tmp_path, None, "--idle", "600")
    half_pdu = struct.pack(">BBL", 0x01, 0, 200)
    try:
        with contextlib.ExitStack() as stack:
            held = [stack.enter_context(idle_sockets(listener.port, 4, source=f"127.0.0.{n}", payload=half_pdu))
                    for n in range(2, 11)]
            deadline = time.monotonic() + 10
            while sum(map(len, held)) < 36 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.5)  # every held socket has sent its half PDU and gone silent
            statuses = []
            for _ in range(4):
                statuses.append(c_store(listener.port, fresh(good_cr)))
                time.sleep(1.0)
        assert statuses == [0x0000] * 4
        dropped = [r for r in listener.records() if r["event"] == "dropped" and r["address"] != "127.0.0.1"]
        assert any("closed to admit a new connection" in r["reason"] for r in dropped)
    finally:
        listener.stop()


def test_a_received_radiograph_that_is_also_a_zip_is_certified_never_unpacked(tmp_path, small_cr):
    """A valid DICOM file whose last private element holds a zip nested 600 deep: the listener used to unpack
    it (a RecursionError set the study aside, and its radiograph was never certified)."""
    from support.dicom_files import nested_zip, with_zip_tail

    listener = RunningListener(tmp_path, None)
    try:
        hostile = with_zip_tail(small_cr, tmp_path / "tail.dcm", nested_zip(600))
        assert c_store(listener.port, hostile) == 0x0000
        outcome = listener.wait_for(lambda r: r["event"] in ("certified", "failed"), timeout_s=120)
        assert outcome["event"] == "certified", outcome
        assert not list((tmp_path / "spool" / "failed").rglob("*.dcm"))
    finally:
        listener.stop()


def test_a_jpeg2000_codestream_larger_than_its_header_is_refused_on_receipt(node, small_cr, tmp_path):
    from support.dicom_files import lying_codestream

    compressed = tmp_path / "j2k.dcm"
    dataset = pydicom.dcmread(small_cr)
    dataset.compress(pydicom.uid.JPEG2000Lossless)
    dataset.save_as(compressed, enforce_file_format=True)
    lying = pydicom.dcmread(lying_codestream(compressed, tmp_path / "lying.dcm", 20000, 20000))
    lying.SOPInstanceUID = lying.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    before, before_mb = len(node.records()), node.peak_memory_mb()
    assert c_store(node.port, lying, syntax=pydicom.uid.JPEG2000Lossless) == 0xA700
    refusal = node.wait_for(lambda r: r["event"] == "refused", after=before, timeout_s=10)
    assert "the codestream declares 20000 x 20000 pixels" in refusal["reason"]
    assert node.peak_memory_mb() - before_mb < 100


@pytest.mark.parametrize("title", [b"STORE\x1b[2JSCU", b"STORE\\SCU", b"STORE\nFORGED"])
def test_a_malformed_calling_ae_title_is_logged_as_malformed(node, title):
    """It was logged as 'no valid association request within the ACSE timeout' (or an association limit)."""
    before = len(node.records())
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as connection:
        connection.sendall(association_request(b"CERTSEG", title))
        connection.settimeout(5)
        with contextlib.suppress(OSError):
            while connection.recv(4096):
                pass
    line = node.wait_for(lambda r: r["event"] in ("dropped", "rejected", "aborted"), after=before, timeout_s=10)
    assert "calling AE title" in line["reason"] and "malformed" in line["reason"], line


def association_request(called: bytes, calling: bytes) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) for Verification, with AE titles written as given."""
    def item(kind: int, body: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(body)) + body

    context = item(0x20, bytes([1, 0, 0, 0]) + item(0x30, b"1.2.840.10008.1.1") + item(0x40, b"1.2.840.10008.1.2"))
    body = (struct.pack(">HH", 1, 0) + called.ljust(16) + calling.ljust(16) + bytes(32)
            + item(0x10, b"1.2.840.10008.3.1.1.1") + context + item(0x50, item(0x51, struct.pack(">I", 16384))))
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def test_a_command_naming_another_instance_than_its_dataset_is_refused_and_logged(node, good_cr, tmp_path):
    """A C-STORE whose Affected SOP Instance UID differs from the dataset's was accepted, and nothing logged."""
    from pynetdicom import _config

    dataset = fresh(good_cr)
    dataset.save_as(tmp_path / "mismatch.dcm", enforce_file_format=True)
    other = generate_uid()  # what the command will say: the file meta's UID, the same length as the dataset's
    other = (other + "1" * 64)[: len(str(dataset.SOPInstanceUID))].rstrip(".")
    data = (tmp_path / "mismatch.dcm").read_bytes()
    meta_end = data.index(str(dataset.SOPInstanceUID).encode())  # its first occurrence: in the file meta
    (tmp_path / "mismatch.dcm").write_bytes(data[:meta_end] + other.ljust(len(str(dataset.SOPInstanceUID))).encode()
                                            + data[meta_end + len(str(dataset.SOPInstanceUID)):])
    assert pydicom.dcmread(tmp_path / "mismatch.dcm").file_meta.MediaStorageSOPInstanceUID != dataset.SOPInstanceUID
    before = len(node.records())
    _config.STORE_SEND_CHUNKED_DATASET = True  # the command from the file meta, the dataset's bytes as they are
    try:
        status = c_store(node.port, tmp_path / "mismatch.dcm")
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    assert status == 0xC210
    refusal = node.wait_for(lambda r: r["event"] == "refused", after=before, timeout_s=10)
    assert "Affected SOP Instance UID" in refusal["reason"] and str(dataset.SOPInstanceUID) in refusal["reason"]
