"""The README and the documentation say what the code does: the Python API runs as written (each ```python block
of the model developer's "Python API" section, in order, on the shipped sample with the shipped models), every
`certseg ...` they quote names commands and options the command line has, and the documentation builds into a
site (MkDocs, strict) with every link and anchor resolving."""

import argparse
import re
from pathlib import Path

import numpy as np

from certseg.dicom.reading import read_radiograph
from certseg.record import RatioVerdict, Report
from support.dicom_files import SAMPLE_CR

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
GUIDES = sorted((ROOT / "docs").glob("*.md"))
API_PAGE = ROOT / "docs" / "model-developer.md"


def python_api_blocks() -> list[str]:
    text = API_PAGE.read_text()
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
        exec(compile(block, str(API_PAGE), "exec"), namespace)  # noqa: S102 - the documentation's own code
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
    """The lines inside a page's ``` blocks."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def quoted_commands() -> list[list[str]]:
    """Every `certseg ...` the README and the guides quote inline or run in a block, as tokens (of `a\\|b`
    alternatives the first; brackets dropped; a shell line cut at its first `&&` after the command)."""
    text = "\n".join(page.read_text() for page in [README, *GUIDES])
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


def test_the_documentation_builds_into_a_site_with_every_link_resolving(tmp_path):
    """mkdocs --strict fails on a page missing from the navigation, a link to a page or file that does not exist,
    and (validation in mkdocs.yml) an anchor that no heading makes."""
    import subprocess
    import sys

    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    assert (tmp_path / "site" / "radiologist" / "index.html").is_file()


def test_the_readme_links_only_to_files_that_exist_and_stays_short():
    """The README is read in five minutes: what CertSeg is, the two commands, one picture, where to go next."""
    text = README.read_text()
    targets = [t for t in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text) if "://" not in t]
    assert targets and all((ROOT / t).exists() for t in targets), targets
    assert len(text.split()) < 800 and len(re.findall(r"!\[", text)) == 1
    assert text.count("```") == 4  # the two set-up commands
