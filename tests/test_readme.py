"""The README's commands are the ones CI runs, and the package says what the README says."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _shell_block_after(text: str, heading: str) -> str:
    """The first ```sh block after `heading` in the README, as one line."""
    start = text.index(heading)
    match = re.search(r"```sh\n(.*?)\n```", text[start:], re.S)
    assert match is not None, f"no sh block after {heading!r}"
    return match.group(1).strip()


def test_ci_runs_exactly_the_readmes_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    command = _shell_block_after(readme, "**Run the tests**")
    assert "\n" not in command
    assert command.endswith("python -m pytest -n 2")  # pytest last: its status is CI's
    assert "mypy --strict embedkv examples" in command and "ruff check ." in command
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == command


def test_the_users_install_is_one_type_checkers_see() -> None:
    """A default editable install (pip install -e .) hides the package from mypy."""
    readme = (ROOT / "README.md").read_text()
    try_it = _shell_block_after(readme, "**Try it**")
    assert "python3 -m venv .venv && . .venv/bin/activate && pip install . &&" in try_it
    test = _shell_block_after(readme, "**Run the tests**")
    assert "pip install -e '.[test]' --config-settings editable_mode=strict" in test


def test_license_and_classifiers() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert {"Typing :: Typed", "Operating System :: POSIX"} <= set(project["classifiers"])
    assert (ROOT / "embedkv" / "py.typed").exists()
