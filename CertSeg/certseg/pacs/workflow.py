"""`certseg pacs`: query, retrieve as stored, certify as `certseg certify` does, send the SEGs back."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from certseg.errors import EXIT_OK, EXIT_SOME_FAILED, CertSegError, NetworkError, first_line
from certseg.files import SEG_FILE, objects_to_send
from certseg.pacs.config import PacsServer
from certseg.pacs.query import SeriesRef, StudyQuery
from certseg.status import Status

if TYPE_CHECKING:  # the pacs package never imports the pipeline; it is handed a certify callable
    from certseg.runner import Outcome



@dataclass(frozen=True)
class SendChoice:
    """What goes back into the study beside each SEG and its SR: the secondary capture and the PDF report."""

    capture: bool = True
    pdf: bool = True


class StudyStatus(StrEnum):
    DONE = "done"  # every radiograph certified or kept, its SEG sent
    FAILED = "failed"


@dataclass
class StudyOutcome:
    study_uid: str
    status: StudyStatus
    message: str
    images: list[Outcome] = field(default_factory=list)
    sent: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # retrieve, certify, send


def connect(server: PacsServer):
    """The client for the server's protocol."""
    if server.protocol == "dicomweb":
        from certseg.pacs.dicomweb import DicomWebPacs

        return DicomWebPacs(server)
    from certseg.pacs.dimse import DimsePacs

    return DimsePacs(server)


def pull_certify_push(pacs, query: StudyQuery, certify: Callable[[Path], tuple[int, list[Outcome]]],
                      send: bool = True, choice: SendChoice = SendChoice()) -> list[StudyOutcome]:
    """Every matching study in turn; one study's failure (network, refusal, a bad image) never stops the others.

    `certify(folder)`: certify_input on a folder of retrieved files, with the run's models and parameters.
    """
    try:
        series = pacs.find_series(query)
    except (requests.RequestException, OSError) as error:
        raise NetworkError(f"query failed: {first_line(error, 300)}") from None
    if not series:
        raise CertSegError(f"no CR or DX series matches {query.matching_keys()}")
    studies: dict[str, list[SeriesRef]] = {}
    for ref in series:
        studies.setdefault(ref.study_uid, []).append(ref)
    return [_one_study(pacs, study_uid, refs, certify, send, choice) for study_uid, refs in studies.items()]


def _one_study(pacs, study_uid: str, refs: list[SeriesRef], certify, send: bool, choice: SendChoice) -> StudyOutcome:
    outcome = StudyOutcome(study_uid, StudyStatus.FAILED, "")
    try:
        with tempfile.TemporaryDirectory(prefix="certseg-pacs-") as folder:
            started = time.perf_counter()
            retrieved = [path for index, ref in enumerate(refs) for path in _retrieve(pacs, ref, Path(folder), index)]
            outcome.seconds["retrieve"] = time.perf_counter() - started
            if not retrieved:
                raise NetworkError("the server sent no image")
            started = time.perf_counter()
            _, outcome.images = certify(Path(folder))
            outcome.seconds["certify"] = time.perf_counter() - started
        results = [o.result for o in outcome.images if o.result is not None and (o.result / SEG_FILE).is_file()]
        segs = [folder / SEG_FILE for folder in results]
        if send and segs:
            started = time.perf_counter()
            pacs.store([path for folder in results for path in objects_to_send(folder, capture=choice.capture,
                                                                                pdf=choice.pdf)], study_uid)
            outcome.seconds["send"] = time.perf_counter() - started
            outcome.sent = len(segs)
        failed = [o for o in outcome.images if o.status == Status.FAILED]
        outcome.status = StudyStatus.FAILED if failed else StudyStatus.DONE
        outcome.message = (f"{len(retrieved)} retrieved, {len(segs)} certified, {outcome.sent} SEG sent"
                           + (f", {len(failed)} failed" if failed else "") + "; " + _timings(outcome.seconds))
    except (CertSegError, requests.RequestException, OSError, ValueError, RuntimeError) as error:
        outcome.message = first_line(error, 300)
    return outcome


def _retrieve(pacs, ref: SeriesRef, folder: Path, index: int) -> list[Path]:
    series_folder = folder / f"series{index:04d}"  # never a name the server chose
    series_folder.mkdir()
    return pacs.retrieve_series(ref, series_folder)


def exit_code(outcomes: list[StudyOutcome]) -> int:
    return EXIT_SOME_FAILED if any(o.status == StudyStatus.FAILED for o in outcomes) else EXIT_OK


def _timings(seconds: dict[str, float]) -> str:
    return ", ".join(f"{step} {value:.1f} s" for step, value in seconds.items())
