"""`certseg pacs` (pull, certify, push back), `certseg listen` (a DICOM node that certifies what it receives) and
`certseg viewer` (OHIF, the web viewer, over a DICOMweb PACS)."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from certseg.commands.options import (add_certification_options, certification_request, output_folder, positive_int,
                                      run_options)
from certseg.errors import EXIT_OK, CertSegError
from certseg.names import printable


# The listener's limits: flag, type, default, meaning (ListenerSettings holds them; docs/pacs-administrator.md, "On the hospital network").
LISTENER_LIMITS = (
    ("--max-object-mb", float, 200.0, "largest object, as received and as inflated"),
    ("--max-decoded-mb", float, 1024.0, "largest pixel data an object's header may declare"),
    ("--max-in-flight-mb", float, 1024.0, "memory for objects being received, all associations together"),
    ("--max-queue-mb", float, 20480.0, "spool size for objects waiting to be certified"),
    ("--max-associations", positive_int, 32, "connections open at once"),
    ("--max-associations-per-address", positive_int, 4, "connections open at once from one IP address"),
    ("--acse-timeout", float, 10.0, "seconds a connection may take to ask for an association"),
    ("--dimse-timeout", float, 60.0, "seconds to wait for a DIMSE message"),
    ("--network-timeout", float, 60.0, "seconds an association may stay silent"),
    ("--pdu-timeout", float, 10.0, "seconds a peer may take to send one PDU, from its first byte to its last"),
)


def add_parsers(commands) -> None:
    pacs = commands.add_parser("pacs", help="pull chest radiographs from a PACS, certify them, send the SEGs back")
    pacs.add_argument("--server", required=True, help="a server named in the PACS config file")
    pacs.add_argument("--config", type=Path, help="PACS config file (default: $CERTSEG_PACS_CONFIG, else "
                                                  "~/.config/certseg/pacs.json); secrets from the environment")
    pacs.add_argument("--study", help="StudyInstanceUID")
    pacs.add_argument("--accession", help="AccessionNumber")
    pacs.add_argument("--patient-id", help="PatientID")
    pacs.add_argument("--date-from", help="first StudyDate, YYYYMMDD")
    pacs.add_argument("--date-to", help="last StudyDate, YYYYMMDD")
    pacs.add_argument("--out", type=output_folder, required=True, help="results in OUT/<study>/<series>/<instance>/")
    pacs.add_argument("--no-send", action="store_true", help="certify but send nothing back")
    add_send_options(pacs)
    add_certification_options(pacs)
    pacs.set_defaults(run=run_pacs)

    listen = commands.add_parser("listen", help="a DICOM node (C-STORE and C-ECHO SCP) that certifies what it receives")
    listen.add_argument("--aet", default="CERTSEG", help="this node's AE title (default: %(default)s)")
    listen.add_argument("--bind", default="127.0.0.1",
                        help="address to listen on (default: %(default)s, this machine only; give the interface the "
                             "PACS reaches, or 0.0.0.0 for every interface)")
    listen.add_argument("--port", type=int, default=11112, help="TCP port (default: %(default)s)")
    listen.add_argument("--spool", type=output_folder, required=True,
                        help="on-disk queue and results (resumed on restart)")
    listen.add_argument("--allow", nargs="+", default=[], metavar="AET",
                        help="calling AE titles allowed to send (default: any)")
    listen.add_argument("--sop-class", nargs="+", default=[], metavar="UID",
                        help="storage SOP classes accepted (default: every storage class; only CR/DX chest "
                             "radiographs are certified, the rest acknowledged, logged and removed)")
    listen.add_argument("--idle", type=float, default=30.0, help="seconds without a new object before a study "
                                                                 "is certified (default: %(default)s)")
    listen.add_argument("--send-to", required=True,
                        help="where results go: a server named in the PACS config file, or 'sender' (the calling "
                             "AE at its address, port --sender-port)")
    listen.add_argument("--sender-port", type=int, default=104,
                        help="the sender's DIMSE port when --send-to sender (default: %(default)s)")
    listen.add_argument("--config", type=Path, help="PACS config file (see certseg pacs)")
    limits = listen.add_argument_group("limits (a peer's objects and connections)")
    for flag, kind, default, meaning in LISTENER_LIMITS:
        limits.add_argument(flag, type=kind, default=default, help=f"{meaning} (default: %(default)s)")
    sending = listen.add_argument_group("sending and retention")
    sending.add_argument("--retry-hours", type=float, default=24.0,
                         help="how long a failing send is retried (backoff 2, 4, 8 ... s, at most "
                              "--max-retry-interval) before it waits for a restart (default: %(default)s)")
    sending.add_argument("--max-retry-interval", type=float, default=300.0,
                         help="longest wait between two sends, in seconds (default: %(default)s)")
    sending.add_argument("--keep-failed-days", type=float, default=7.0,
                         help="how long radiographs that could not be certified are kept in SPOOL/failed "
                              "(default: %(default)s)")
    sending.add_argument("--max-failed-mb", type=float,
                         help="most that SPOOL/failed may hold, oldest pruned first (default: a quarter of "
                              "--max-queue-mb, which counts it too)")
    sending.add_argument("--keep-finished-days", type=float, default=7.0,
                         help="how long the records and results of finished studies are kept (default: %(default)s)")
    add_send_options(sending)
    tls = listen.add_argument_group("DICOM TLS (optional)")
    tls.add_argument("--tls-cert", type=Path, help="this node's certificate (PEM); with --tls-key, TLS is on")
    tls.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    tls.add_argument("--tls-ca", type=Path, help="CA bundle: peers must present a certificate it signed (and so must "
                                                 "the sender when results go back to it)")
    add_certification_options(listen)
    listen.set_defaults(run=run_listen)


    viewer = commands.add_parser("viewer", help="serve OHIF, the web viewer, over a DICOMweb PACS (read-only)")
    viewer.add_argument("--server", required=True, help="a DICOMweb server named in the PACS config file")
    viewer.add_argument("--config", type=Path, help="PACS config file (as for `certseg pacs`)")
    viewer.add_argument("--ohif", type=Path, required=True, help="folder holding OHIF's build (@ohif/app's dist/)")
    viewer.add_argument("--install-ohif", action="store_true",
                        help="first fetch @ohif/app with npm into --ohif (its sha512 checked), if not there yet")
    viewer.add_argument("--bind", default="127.0.0.1",
                        help="address to serve on (default: %(default)s, this machine only)")
    viewer.add_argument("--port", type=int, default=3000, help="TCP port (default: %(default)s)")
    viewer.set_defaults(run=run_viewer)

    site = commands.add_parser("reference-deployment",
                               help="Orthanc that certifies what it receives, with OHIF beside it, on this machine")
    site.add_argument("--storage", type=Path, required=True,
                      help="folder for everything: Orthanc's files, its log, OHIF, the viewer's credentials")
    site.add_argument("--http-port", type=int, default=8042, help="Orthanc's HTTP and DICOMweb port (this machine only)")
    site.add_argument("--dicom-port", type=int, default=4242, help="Orthanc's DICOM port")
    site.add_argument("--aet", default="CERTSEG_PACS", help="Orthanc's AE title")
    site.add_argument("--allow", nargs="+", default=["STORESCU@127.0.0.1"], metavar="AET@HOST",
                      help="DICOM peers allowed to send (default: %(default)s, DCMTK's storescu on this machine)")
    site.add_argument("--viewer-port", type=int, default=3000, help="OHIF's port")
    site.add_argument("--viewer-bind", default="127.0.0.1", help="address OHIF is served on (default: %(default)s)")
    site.add_argument("--stable-seconds", type=int, default=10,
                      help="a study is certified this long after its last object arrived")
    site.add_argument("--certify-arguments", default="", metavar="ARGS",
                      help='options added to `certseg certify`, as one string (e.g. "--no-denoiser")')
    site.set_defaults(run=run_reference_deployment)


def run_reference_deployment(args) -> int:
    require_pacs_extra("reference-deployment")
    import shlex

    from certseg.pacs.deployment import AllowedPeer, Deployment, serve

    deployment = Deployment(args.storage, args.http_port, args.dicom_port, args.viewer_port, args.viewer_bind,
                            args.aet, tuple(AllowedPeer.parse(text) for text in args.allow),
                            tuple(shlex.split(args.certify_arguments)), args.stable_seconds)
    signal.signal(signal.SIGTERM, _stop_serving)
    try:
        return serve(deployment, announce=lambda text: print(text, flush=True))
    except KeyboardInterrupt:
        print("certseg reference-deployment: stopped", flush=True)
        return EXIT_OK


def run_viewer(args) -> int:
    require_pacs_extra("viewer")
    from certseg.pacs.config import load_server
    from certseg.pacs.viewer import Upstream, ViewerServer, install_ohif, ohif_folder_problem

    server = load_server(args.server, args.config)
    if not server.dicomweb:
        raise CertSegError(f"server {server.name!r} is DIMSE only: the viewer needs a DICOMweb server")
    if args.install_ohif and ohif_folder_problem(args.ohif):
        install_ohif(args.ohif)
    upstream = Upstream(server.dicomweb, server.username, server.password, server.token,
                        server.ca_bundle or server.verify, server.limits.read_timeout_s)
    try:
        viewer = ViewerServer((args.bind, args.port), args.ohif, upstream)
    except OSError as error:
        raise CertSegError(f"cannot serve on {args.bind}:{args.port}: {error.strerror}") from None
    signal.signal(signal.SIGTERM, _stop_serving)
    print(f"certseg viewer: OHIF on {viewer.url}/ over {server.name} ({server.dicomweb}), read-only", flush=True)
    try:
        viewer.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        viewer.server_close()
    return EXIT_OK


def _stop_serving(signum, frame):
    """SIGTERM stops the viewer as Ctrl-C does: it holds nothing that needs finishing."""
    raise KeyboardInterrupt


def add_send_options(parser) -> None:
    parser.add_argument("--no-capture", action="store_true",
                        help="do not send the secondary capture (the certified overlay as an image every viewer shows)")
    parser.add_argument("--no-pdf", action="store_true", help="do not send the report page (Encapsulated PDF)")


def require_pacs_extra(command: str) -> None:
    """pynetdicom and dicomweb-client come with the pacs extra: without them, one line and nothing made."""
    import importlib.util

    missing = [name for name in ("pynetdicom", "dicomweb_client") if importlib.util.find_spec(name) is None]
    if missing:
        raise CertSegError(f'certseg {command} needs the pacs extra ({", ".join(missing)} missing): '
                           f'pip install "certseg[pacs]"')


def run_pacs(args) -> int:
    require_pacs_extra("pacs")
    from certseg.pacs.config import load_server
    from certseg.pacs.query import StudyQuery
    from certseg.pacs.workflow import SendChoice, StudyStatus, connect, exit_code, pull_certify_push
    from certseg.runner import certify_input
    from certseg.status import Status

    request, options = certification_request(args), run_options(args)
    query = StudyQuery(args.study, args.accession, args.patient_id, args.date_from, args.date_to)
    server = load_server(args.server, args.config)
    from certseg.pipeline import CertificationPipeline  # torch, MONAI and diffusers: once the request is sound

    pipeline = CertificationPipeline.from_folder(options)

    def certify(folder: Path):
        return certify_input(folder, args.out, pipeline, request, overwrite=args.overwrite, quiet=args.quiet,
                             received=True)

    outcomes = pull_certify_push(connect(server), query, certify, send=not args.no_send,
                                 choice=SendChoice(capture=not args.no_capture, pdf=not args.no_pdf))
    for study in outcomes:
        for image in study.images:
            stream = sys.stderr if image.status == Status.FAILED else sys.stdout
            print(printable(f"  {image.status}: {image.message}"), file=stream)
        print(printable(f"study {study.study_uid}: {study.status}: {study.message}"),
              file=sys.stderr if study.status == StudyStatus.FAILED else sys.stdout)
    counts = {s: sum(o.status == s for o in outcomes) for s in StudyStatus}
    print(f"certseg pacs ({server.name}, {server.protocol}): " + ", ".join(f"{v} studies {k}" for k, v in counts.items()))
    return exit_code(outcomes)


def run_listen(args) -> int:
    require_pacs_extra("listen")
    import datetime
    import threading

    from certseg.pacs.config import DimseAddress, PacsServer, load_server
    from certseg.pacs.listener import Listener
    from certseg.pacs.workflow import connect
    from certseg.runner import certify_input

    request, options = certification_request(args), run_options(args)
    settings = listener_settings(args)
    if settings.tls is not None:
        from certseg.pacs.tls import server_context

        server_context(settings.tls)  # unreadable certificates are one line now, not at the first connection
    destination = None if args.send_to == "sender" else load_server(args.send_to, args.config)
    from certseg.pipeline import CertificationPipeline  # torch, MONAI and diffusers: once the settings are sound

    pipeline = CertificationPipeline.from_folder(options)

    def certify(objects: Path, results: Path, decoding):
        return certify_input(objects, results, pipeline, request, quiet=True, none_is_an_error=False,
                             received=True, replace_changed=True, decoding=decoding)[1]

    def send(paths: list[Path], record) -> None:
        server = destination or PacsServer("sender", calling_aet=args.aet, dimse=DimseAddress(
            record.sender["address"], args.sender_port, record.sender["aet"], settings.tls))
        connect(server).store(paths, record.study_uid)

    writing = threading.Lock()  # pynetdicom's threads log too: one whole line at a time

    def log(record: dict) -> None:
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        line = json.dumps({"time": stamp, **record}) + "\n"
        with writing:
            sys.stdout.write(line)
            sys.stdout.flush()

    listener = Listener(settings, certify, send, log)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())  # finish the current step, then stop
    try:
        listener.run_forever(stopping)
    except KeyboardInterrupt:
        pass
    log({"event": "stopped"})
    return EXIT_OK


def listener_settings(args):
    from certseg.pacs.listener import ListenerSettings
    from certseg.pacs.tls import TlsFiles

    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert or args.tls_key or args.tls_ca else None
    megabytes = {name: int(getattr(args, name) * 2**20) for name in
                 ("max_object_mb", "max_decoded_mb", "max_in_flight_mb", "max_queue_mb")}
    return ListenerSettings(
        args.aet, args.port, args.spool, bind=args.bind, allowed_aets=tuple(args.allow),
        sop_classes=tuple(args.sop_class), idle_s=args.idle, max_object_bytes=megabytes["max_object_mb"],
        max_decoded_bytes=megabytes["max_decoded_mb"], max_in_flight_bytes=megabytes["max_in_flight_mb"],
        max_queue_bytes=megabytes["max_queue_mb"], max_associations=args.max_associations,
        max_associations_per_address=args.max_associations_per_address, acse_timeout_s=args.acse_timeout,
        dimse_timeout_s=args.dimse_timeout, network_timeout_s=args.network_timeout, pdu_timeout_s=args.pdu_timeout,
        max_retry_interval_s=args.max_retry_interval, retry_window_s=args.retry_hours * 3600.0,
        failed_retention_s=args.keep_failed_days * 86400.0,
        max_failed_bytes=None if args.max_failed_mb is None else int(args.max_failed_mb * 2**20),
        finished_retention_s=args.keep_finished_days * 86400.0, tls=tls, send_capture=not args.no_capture,
        send_pdf=not args.no_pdf)
