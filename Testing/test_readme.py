"""The README says what the code does: its Python API runs as written (each ```python block of the "Python API"
section, in order, on the shipped sample with the shipped models), and every `certseg ...` it quotes names
commands and options the command line has."""

import argparse
import re
from pathlib import Path

import numpy as np

from certseg.dicom.reading import read_radiograph
from certseg.record import RatioVerdict, Report
from support.dicom_files import SAMPLE_CR

README = Path(__file__).parents[1] / "README.md"


def python_api_blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_readmes_python_api_runs_on_the_sample(certified_sample):
    from certseg import CertificationPipeline, RunOptions, StoredImage

    blocks = python_api_blocks()
    assert len(blocks) == 3
    pixels = read_radiograph(SAMPLE_CR).pixels
    image = CertificationPipeline.from_folder(RunOptions(use_denoiser=False)).input_map(StoredImage(pixels, "x"))(pixels)
    namespace = {"pixels": pixels, "image": image.astype(np.float32), "result_folder": certified_sample[2]}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    assert namespace["result"].source_labels.shape == pixels.shape
    assert namespace["result"].radius.model_space > 0
    certificate = namespace["certificate"]
    assert certificate.labels.shape == image.shape and (certificate.labels >= 0).any()
    assert isinstance(namespace["report"], Report)
    assert namespace["report"].measurements.cardiothoracic_ratio.verdict in tuple(RatioVerdict)


def subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:  # noqa: SLF001 - argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:  # noqa: SLF001
            return action.choices[name]
    return None


def fenced_lines(text: str) -> list[str]:
    """The lines inside the README's ``` blocks."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def quoted_commands() -> list[list[str]]:
    """Every `certseg ...` the README quotes inline or runs in a block, as tokens (of `a\\|b` alternatives the
    first; brackets dropped; a shell line cut at its first `&&` after the command)."""
    text = README.read_text()
    quoted = re.findall(r"`(certseg [^`]+)`", text)
    quoted += ["certseg " + line.split("certseg ", 1)[1].split("&&")[0] for line in fenced_lines(text)
               if re.search(r"(^|/)certseg ", line)]
    return [re.sub(r"\\\|\S+", "", command).replace("[", " ").replace("]", " ").split() for command in quoted]


def test_every_command_the_readme_quotes_exists_with_its_options():
    from certseg.commands import parser

    root = parser()
    commands = quoted_commands()
    assert len(commands) > 30
    unknown = []
    for tokens in commands:
        command = root
        for word in tokens[1:]:
            child = None if word.startswith("-") else subcommand(command, word)
            if child is None:
                break
            command = child
        assert command is not root or tokens[1:2] == ["--version"], tokens
        options = {option for action in command._actions for option in action.option_strings}  # noqa: SLF001
        unknown += [(" ".join(tokens), word) for word in tokens
                    if word.startswith("--") and word.split("=")[0].rstrip(",.;:)") not in options]
    assert unknown == []
