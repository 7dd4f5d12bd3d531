"""The `certseg` command line run in this process, as a subprocess's result (what a CLI test asserts on).

In-process, a test pays for importing torch once instead of once per command; an exception that would
have been a traceback fails the test.  Tests of the entry point itself, of signals and of the Slicer
module's child process still start real processes.
"""

import contextlib
import io
import subprocess

from certseg.commands import main


def run_certseg(*args) -> subprocess.CompletedProcess:
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = [str(a) for a in args]
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse: --help, --version, bad options
            code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
    return subprocess.CompletedProcess(["certseg", *argv], code, stdout.getvalue(), stderr.getvalue())
