"""CertSeg's own errors, which the command line turns into one line and exit 2 (3 for an out-of-distribution
refusal), and the exit codes.  Anything else that escapes is a bug: exit 70, its traceback in a file.

    CertSegError             the user's input, parameters or files: stated as `where: reason`
      ParameterError         a parameter out of its range or unknown
      InputError             an image CertSeg cannot certify as it is
      ModelError             a model folder that is missing, incomplete or does not match its card
      NetworkError           a PACS or peer that refused, failed or did not answer
      OutOfDistributionError the out-of-distribution check refused the image
      (record.ReportError    a report.json that is not one)
"""

# 0 success; 1 some images failed (the others were processed); 2 bad input or parameters,
# or nothing to certify; 3 `certify-array`'s one image refused by the out-of-distribution check
# (the Slicer module offers an override on this code alone); 70 an internal error, a bug (EX_SOFTWARE);
# 130 interrupted.
EXIT_OK, EXIT_SOME_FAILED, EXIT_BAD_INPUT, EXIT_OUT_OF_DISTRIBUTION = 0, 1, 2, 3
EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED = 70, 130

# In the one-line refusal of an image the input check rejects, before the measure that refused it;
# the Slicer module finds the reason by it.
OOD_REFUSAL = "refused by "


class CertSegError(Exception):
    """A problem with the user's input or parameters, stated as `file: reason`."""


class ParameterError(CertSegError, ValueError):
    """A parameter out of its range or unknown (exit 2).  Also a ValueError, for callers of the Python API."""


class InputError(CertSegError, ValueError):
    """An input CertSeg cannot certify as it is: a flat image, NaN values, not one 2D frame (exit 2)."""


class ModelError(CertSegError, ValueError):
    """A model folder that is missing, incomplete or does not match its card (exit 2: the user named it)."""


class NetworkError(CertSegError):
    """A PACS or DICOM peer that refused an association, failed an operation or did not answer."""


class OutOfDistributionError(CertSegError):
    """The out-of-distribution check refused the image (`--force` overrides it)."""

    def located(self, where: object) -> "OutOfDistributionError":
        return OutOfDistributionError(f"{where}: {self}")


def first_line(error: Exception, limit: int | None = None) -> str:
    """The first line of an exception's message (its type's name when empty), at most `limit` characters."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:limit]
