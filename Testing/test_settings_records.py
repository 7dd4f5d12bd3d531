"""Every settings record is valid by construction: a bad value fails where the record is built, naming it."""

from pathlib import Path

import pytest

from certseg.errors import ParameterError
from certseg.model.execution import Execution
from certseg.pacs.listener import ListenerSettings
from certseg.pacs.query import StudyQuery
from certseg.request import CertificationRequest

pytestmark = pytest.mark.fast  # the fast tier: pytest -m fast


@pytest.mark.parametrize("build, words", [
    (lambda: ListenerSettings("CERTSEG", 0, Path("spool")), "port"),
    (lambda: ListenerSettings("A" * 17, 11112, Path("spool")), "AE title"),
    (lambda: ListenerSettings("CERTSEG", 11112, Path("spool"), pdu_timeout_s=0), "PDU timeout"),
    (lambda: ListenerSettings("CERTSEG", 11112, Path("spool"), max_in_flight_bytes=1), "in-flight"),
    (lambda: StudyQuery(), "never pulls a whole archive"),
    (lambda: StudyQuery(date_from="2026-01-01"), "YYYYMMDD"),
    (lambda: Execution(precision="int8"), "precision"),
    (lambda: CertificationRequest(sigma=-1.0), "sigma"),
])
def test_a_bad_setting_fails_where_the_record_is_built(build, words):
    with pytest.raises(ParameterError, match=words):
        build()


def test_attack_settings_are_valid_by_construction():
    from certseg.research.attack import AttackSettings

    with pytest.raises(ParameterError, match="fractions"):
        AttackSettings(fractions=(0.5, 1.5))
    assert AttackSettings().steps == 20


def test_good_records_build():
    assert ListenerSettings("CERTSEG", 11112, Path("spool")).failed_limit_bytes > 0
    assert StudyQuery(study_uid="1.2.3").matching_keys() == {"StudyInstanceUID": "1.2.3"}
