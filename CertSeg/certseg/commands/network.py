"""`certseg pacs` (pull, certify, push back) and `certseg listen` (a DICOM node that certifies what it receives)."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from certseg.commands.options import add_certification_options, certification_request, positive_int, run_options
from certseg.errors import EXIT_OK


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
    pacs.add_argument("--out", type=Path, required=True, help="results in OUT/<study>/<series>/<instance>/")
    pacs.add_argument("--no-send", action="store_true", help="certify but send nothing back")
    add_certification_options(pacs)
    pacs.set_defaults(run=run_pacs)

    listen = commands.add_parser("listen", help="a DICOM node (C-STORE SCP) that certifies what it receives")
    listen.add_argument("--aet", default="CERTSEG", help="this node's AE title")
    listen.add_argument("--port", type=int, default=11112)
    listen.add_argument("--spool", type=Path, required=True, help="on-disk queue and results (resumed on restart)")
    listen.add_argument("--allow", nargs="+", default=[], metavar="AET",
                        help="calling AE titles allowed to send (default: any)")
    listen.add_argument("--sop-class", nargs="+", default=[], metavar="UID",
                        help="storage SOP classes accepted (default: every storage class; only CR/DX chest "
                             "radiographs are certified, the rest acknowledged and logged)")
    listen.add_argument("--idle", type=float, default=30.0, help="seconds without a new object before a study "
                                                                 "is certified")
    listen.add_argument("--send-to", required=True,
                        help="where results go: a server named in the PACS config file, or 'sender' (the calling "
                             "AE at its address, port --sender-port)")
    listen.add_argument("--sender-port", type=int, default=104)
    listen.add_argument("--config", type=Path, help="PACS config file (see certseg pacs)")
    listen.add_argument("--max-object-mb", type=float, default=200.0)
    listen.add_argument("--max-queue-mb", type=float, default=20480.0)
    listen.add_argument("--send-attempts", type=positive_int, default=5,
                        help="tries per study (backoff 2, 4, 8 ... s) before it is reported failed")
    add_certification_options(listen)
    listen.set_defaults(run=run_listen)


def run_pacs(args) -> int:
    from certseg.pacs.config import load_server
    from certseg.pacs.query import StudyQuery
    from certseg.pacs.workflow import StudyStatus, connect, exit_code, pull_certify_push
    from certseg.pipeline import CertificationPipeline
    from certseg.runner import Status, certify_input

    request, options = certification_request(args), run_options(args)
    query = StudyQuery(args.study, args.accession, args.patient_id, args.date_from, args.date_to)
    query.validate()
    server = load_server(args.server, args.config)
    pipeline = CertificationPipeline.from_folder(options)

    def certify(folder: Path):
        return certify_input(folder, args.out, pipeline, request, overwrite=args.overwrite, quiet=args.quiet)

    outcomes = pull_certify_push(connect(server), query, certify, send=not args.no_send)
    for study in outcomes:
        for image in study.images:
            stream = sys.stderr if image.status == Status.FAILED else sys.stdout
            print(f"  {image.status}: {image.message}", file=stream)
        print(f"study {study.study_uid}: {study.status}: {study.message}",
              file=sys.stderr if study.status == StudyStatus.FAILED else sys.stdout)
    counts = {s: sum(o.status == s for o in outcomes) for s in StudyStatus}
    print(f"certseg pacs ({server.name}, {server.protocol}): " + ", ".join(f"{v} studies {k}" for k, v in counts.items()))
    return exit_code(outcomes)


def run_listen(args) -> int:
    import datetime

    from certseg.pacs.config import DimseAddress, PacsServer, load_server
    from certseg.pacs.listener import Listener, ListenerSettings
    from certseg.pacs.workflow import connect
    from certseg.pipeline import CertificationPipeline
    from certseg.runner import certify_input

    request, options = certification_request(args), run_options(args)
    settings = ListenerSettings(args.aet, args.port, args.spool, tuple(args.allow), tuple(args.sop_class), args.idle,
                                int(args.max_object_mb * 2**20), int(args.max_queue_mb * 2**20), args.send_attempts)
    settings.validate()
    destination = None if args.send_to == "sender" else load_server(args.send_to, args.config)
    pipeline = CertificationPipeline.from_folder(options)

    def certify(objects: Path, results: Path) -> list[Path]:
        _, outcomes = certify_input(objects, results, pipeline, request, quiet=True)
        return [o.result for o in outcomes if o.result is not None]

    def send(paths: list[Path], state: dict) -> None:
        server = destination or PacsServer("sender", dimse=DimseAddress(state["sender"]["address"], args.sender_port,
                                                                        state["sender"]["aet"]), calling_aet=args.aet)
        connect(server).store(paths, state["study_uid"])

    def log(record: dict) -> None:
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        print(json.dumps({"time": stamp, **record}), flush=True)

    listener = Listener(settings, certify, send, log)
    signal.signal(signal.SIGTERM, lambda *_: listener.stopping.set())  # finish the current step, then stop
    try:
        listener.run_forever()
    except KeyboardInterrupt:
        pass
    log({"event": "stopped"})
    return EXIT_OK


