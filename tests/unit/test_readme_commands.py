"""The README's setup stays two commands, and CI runs the second one as the README writes it.

Command 1 must also work as root in a fresh Debian container, which has no `sudo`: it asks for
`sudo` only where there is one (`$(command -v sudo)`), and refreshes the package lists first.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = readme.split("## Setup: two commands", 1)[1]
    block = re.search(r"```bash\n(.*?)```", setup, re.S)
    assert block is not None, "README's Setup has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_setup_is_two_commands() -> None:
    assert len(_setup_commands()) == 2


def test_ci_runs_the_readmes_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    last = [line for line in ci.splitlines() if line.strip() and not line.startswith("#")][-1]
    assert last == _setup_commands()[1]


def test_command_one_needs_no_sudo() -> None:
    first = _setup_commands()[0]
    steps = [step.strip() for step in first.split("&&")]
    apt = [step for step in steps if "apt-get" in step]
    assert apt, first
    for step in apt:
        assert step.startswith("$(command -v sudo) apt-get "), step
    assert apt[0].endswith("apt-get update"), "a fresh container has no package lists"
    assert not re.search(r"(^|[;&|(]\s*)sudo ", first), first
