"""The README's promises: its first two commands, and CI running the same test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.+?)\n```", text, flags=re.DOTALL)


def test_readme_opens_with_the_demo_and_the_test_command() -> None:
    """The first command installs and runs the demo; the second installs and runs the tests."""
    first, second = commands()[:2]
    assert "pip install" in first and first.rstrip().endswith("fetcher demo")
    assert "pip install" in second and second.rstrip().endswith("pytest")


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    """.ci/run calls the README's test command, so a missing install step fails CI too."""
    test_command = commands()[1].strip()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci
