"""The one rule for names taken from files and peers (certseg.names): a DICOM UID, and a folder under its root."""

import os

import pytest

from certseg.errors import CertSegError
from certseg.names import contained_path, result_folder, uid_problem
from support.dicom_files import traversal_uids

pytestmark = pytest.mark.fast  # the fast tier: pytest -m fast


@pytest.mark.parametrize("value", ["1.2.840.10008.5.1.4.1.1.1", "0", "1.0.2", "2.25." + "9" * 39])
def test_dicom_uids_are_accepted(value):
    assert uid_problem(value) is None


@pytest.mark.parametrize("value, words", [
    ("", "empty"), ("1.2.840.", "empty component"), (".1.2", "empty component"), ("1.02", "leading zero"),
    ("1.2.3a", "characters other than"), ("1.2 .3", "characters other than"), ("1/2", "characters other than"),
    ("1." * 32 + "1", "65 characters"), ("1.2\x00", "characters other than"),
])
def test_anything_else_is_refused_with_the_reason(value, words):
    assert words in uid_problem(value)


@pytest.mark.parametrize("case", list(traversal_uids(__import__("pathlib").Path("/tmp/escaped"))))
@pytest.mark.parametrize("position", [0, 1, 2])
def test_every_uid_position_of_a_result_folder_refuses_traversal(case, position, tmp_path):
    uids = ["1.2.3", "1.2.3.4", "1.2.3.4.5"]
    uids[position] = traversal_uids(tmp_path / "escaped")[case]
    with pytest.raises(CertSegError, match="is not a DICOM UID"):
        result_folder(tmp_path / "out", tuple(uids))
    assert not (tmp_path / "escaped").exists()


def test_a_symlink_inside_the_root_cannot_carry_a_path_out(tmp_path):
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "out" / "1.2")
    with pytest.raises(CertSegError, match="outside"):
        contained_path(tmp_path / "out", "1.2", "3")
    with pytest.raises(CertSegError, match="outside"):
        contained_path(tmp_path / "out", ".")
    assert contained_path(tmp_path / "out", "1.3", "4") == tmp_path / "out" / "1.3" / "4"
