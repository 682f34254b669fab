"""The README's example runs, and CI runs exactly the README's test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def code_blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_example_runs():
    (example,) = code_blocks("python")
    assert len([line for line in example.splitlines() if line.strip()]) <= 10
    exec(compile(example, "README.md", "exec"), {})


def test_ci_runs_the_readme_test_command():
    commands = [
        line for block in code_blocks("bash") for line in block.splitlines() if line and not line.startswith("#")
    ]
    assert len(commands) == 2, commands  # the main job, then the tests
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci
    assert "pip install torch==2.13.0" in ci
    assert "python examples/train_asap_tlam.py" in commands[0]
