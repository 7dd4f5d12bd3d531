"""The `certseg` command line: one module per group of commands, each thin over the backend.

Exit codes (certseg.errors): 0 success; 1 some images failed (the others were processed); 2 bad
input or parameters, or nothing to certify; 3 certify-array's image refused as out of distribution;
70 an internal error (a bug; its traceback goes to a file); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from certseg import __version__
from certseg.commands import certify, network, research
from certseg.names import printable
from certseg.errors import (EXIT_BAD_INPUT, EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED, EXIT_OUT_OF_DISTRIBUTION, CertSegError,
                            OutOfDistributionError)


def main(argv: list[str] | None = None) -> int:
    """Only CertSeg's own errors are the user's (one line, exit 2 or 3); anything else is a bug: one line that
    says so, the traceback in a file for the bug report, exit 70."""
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except OutOfDistributionError as error:
        print(f"certseg: error: {printable(error)}", file=sys.stderr)
        return EXIT_OUT_OF_DISTRIBUTION
    except CertSegError as error:
        print(f"certseg: error: {printable(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("certseg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - a bug: never dressed up as the user's bad input
        report = _write_traceback()
        print(f"certseg: internal error ({type(error).__name__}: {printable(str(error)[:200])}); this is a bug in CertSeg, "
              f"please report it with {report}", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


def _write_traceback() -> str:
    import tempfile
    import traceback

    with tempfile.NamedTemporaryFile("w", prefix="certseg-bug-", suffix=".txt", delete=False) as stream:
        stream.write(f"certseg {__version__}\n{' '.join(sys.argv)}\n\n{traceback.format_exc()}")
    return stream.name


class _DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it has none worth saying (None, False) or says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class _OneLineErrorParser(argparse.ArgumentParser):
    """A bad option is one line and exit 2, like every other bad parameter (`--help` shows usage)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def research_installed() -> bool:
    """Training, evaluation, DRRs and attacks (certseg.research) are not packed into the Slicer extension."""
    import importlib.util

    return importlib.util.find_spec("certseg.research") is not None


def parser() -> argparse.ArgumentParser:
    root = _OneLineErrorParser(prog="certseg", description="Certified chest X-ray segmentation.")
    root.add_argument("--version", action="version", version=f"certseg {__version__}")
    commands = root.add_subparsers(dest="command", required=True)
    for group in (certify, network) + ((research,) if research_installed() else ()):
        group.add_parsers(commands)
    for command in _all_parsers(root):
        command.formatter_class = _DefaultsHelpFormatter
    return root


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and every subcommand's parser below it."""
    found = [parser]
    for action in parser._actions:  # noqa: SLF001 - argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for child in dict.fromkeys(action.choices.values()):
                found += _all_parsers(child)
    return found
