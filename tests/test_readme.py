"""The README's example runs, CI runs exactly the README's test command, and its links work off GitHub."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
REPOSITORY_FILES = (
    "https://github.com/label-merge/label-merge/blob/main/",
    "https://raw.githubusercontent.com/label-merge/label-merge/main/",
)


def code_blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def commands(block):
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def link_targets():
    """Targets of inline links and images, ``[text](target)``, and of reference definitions."""
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    inline = re.findall(r"\]\(([^)\s]+)\)", prose)
    references = re.findall(r"^\[[^\]]+\]:\s*(\S+)", prose, flags=re.M)
    return inline + references


def test_readme_example_runs():
    (example,) = code_blocks("python")
    assert len([line for line in example.splitlines() if line.strip()]) <= 10
    exec(compile(example, "README.md", "exec"), {})


def test_ci_runs_the_readme_test_command():
    # The first two shell blocks are the set-up from a clone: the main job, then the tests.
    main_job, tests = (commands(block) for block in code_blocks("bash")[:2])
    assert len(main_job) == 1 and len(tests) == 1, (main_job, tests)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests[0] in ci
    assert "pip install torch==2.13.0" in ci
    assert "python examples/train_asap_tlam.py" in main_job[0]


def test_links_are_absolute_and_name_files_that_exist():
    """An index page renders the README away from the repository, so relative links would break."""
    targets = link_targets()
    assert len(targets) >= 10, targets
    for target in targets:
        assert target.startswith(("https://", "#")), f"relative link in README.md: {target}"
        prefix = next((p for p in REPOSITORY_FILES if target.startswith(p)), None)
        if prefix is not None:
            path = target.removeprefix(prefix).split("#")[0]
            assert (ROOT / path).is_file(), f"README.md links to {target}, but there is no {path}"
