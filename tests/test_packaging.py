"""What a user gets from the built distributions, and ``python -m label_merge``.

The wheel and sdist are built once, offline (no build isolation: setuptools, build and twine
come with the ``test`` extra). The wheel is installed with pip into a fresh virtual environment
in a temporary folder, which sees torch and einops through a ``.pth`` file instead of
reinstalling them, and the README's example runs there.
"""

from __future__ import annotations

import configparser
import email
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import label_merge

ROOT = Path(__file__).resolve().parent.parent
SDIST_LEAVES_OUT = {".gitignore"}


def run(args, **kwargs) -> subprocess.CompletedProcess:
    """Run a command, failing the test with its output if it fails."""
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False, **kwargs)
    assert done.returncode == 0, f"{args} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """The sdist, and the wheel built from it, as ``{"sdist": path, "wheel": path}``."""
    pytest.importorskip("build", reason="python -m build comes with the test extra")
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT])
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


@pytest.fixture(scope="module")
def wheel_metadata(dists) -> email.message.Message:
    with zipfile.ZipFile(dists["wheel"]) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_string(archive.read(name).decode())


def requirements(metadata: email.message.Message, extra: str | None) -> list[str]:
    """Requirement names of the core (``extra=None``) or of one extra."""
    names = []
    for line in metadata.get_all("Requires-Dist"):
        marker = re.search(r'extra == "([^"]+)"', line)
        if (marker.group(1) if marker else None) == extra:
            names.append(re.match(r"[A-Za-z0-9._-]+(\[[^\]]*\])?", line).group(0))
    return names


def test_wheel_holds_only_the_library(dists):
    with zipfile.ZipFile(dists["wheel"]) as archive:
        names = archive.namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"label_merge"}  # no `examples`, `tests` or `benchmarks` import names
    assert {"label_merge/py.typed", "label_merge/__main__.py"} <= set(names)
    assert "label_merge/_triton/kernels.py" in names


def test_metadata(wheel_metadata):
    assert wheel_metadata["Version"] == label_merge.__version__
    assert wheel_metadata["License-Expression"] == "MIT"
    assert not [c for c in wheel_metadata.get_all("Classifier") if c.startswith("License ::")]
    urls = dict(url.split(", ", 1) for url in wheel_metadata.get_all("Project-URL"))
    assert {"Repository", "Documentation", "Issues"} <= set(urls)
    assert all(url.startswith("https://") for url in urls.values())
    assert requirements(wheel_metadata, None) == ["torch", "einops"]  # what label_merge imports
    assert "torch" not in requirements(wheel_metadata, "docs")  # the docs build is static
    assert requirements(wheel_metadata, "test")[0].startswith("label-merge[")  # extras are not copied


def test_setup_cfg_holds_only_what_pyproject_cannot():
    """The design's layout keeps setup.cfg for tools that cannot read pyproject.toml, not for metadata."""
    setup_cfg = configparser.ConfigParser()
    setup_cfg.read(ROOT / "setup.cfg")
    assert setup_cfg.sections() == ["flake8"]  # no [metadata] or [options]: those are in pyproject.toml
    pyproject = (ROOT / "pyproject.toml").read_text()  # read as text: tomllib needs Python 3.11
    assert "[tool.flake8]" not in pyproject
    ruff_line_length = int(re.search(r"^\[tool\.ruff\]\nline-length = (\d+)$", pyproject, flags=re.M).group(1))
    assert setup_cfg.getint("flake8", "max-line-length") == ruff_line_length


def test_twine_check(dists):
    pytest.importorskip("twine", reason="twine comes with the test extra")
    done = run([sys.executable, "-m", "twine", "check", "--strict", dists["sdist"], dists["wheel"]])
    assert done.stdout.count("PASSED") == 2, done.stdout


def test_sdist_holds_the_source_tree_and_its_tests_collect(dists, tmp_path):
    with tarfile.open(dists["sdist"]) as archive:
        # The "data" filter refuses links and paths outside tmp_path (Python 3.10.12+, 3.11.4+).
        archive.extractall(tmp_path, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (unpacked,) = tmp_path.iterdir()
    shipped = {p.relative_to(unpacked).as_posix() for p in unpacked.rglob("*") if p.is_file()}
    if shutil.which("git") and (ROOT / ".git").exists():
        tracked = set(run(["git", "ls-files"], cwd=ROOT).stdout.splitlines())
        tracked = {name for name in tracked if (ROOT / name).exists()}  # deleted but not yet committed
        assert tracked - SDIST_LEAVES_OUT <= shipped, sorted(tracked - SDIST_LEAVES_OUT - shipped)
    assert {"tests/conftest.py", "tests/helpers.py", "examples/__init__.py", ".ci/run", "mkdocs.yml"} <= shipped
    done = run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"], cwd=unpacked)
    assert re.search(r"\d+ tests collected", done.stdout), done.stdout[-2000:]


@pytest.fixture(scope="module")
def fresh_venv(dists, tmp_path_factory) -> Path:
    """A virtual environment outside the repository with the wheel installed; returns its python."""
    import einops
    import torch

    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    site_packages = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    # torch and einops without reinstalling them; the paths come after the venv's own
    # site-packages, so the wheel's label_merge wins over any other installation.
    dependency_dirs = {Path(module.__file__).parent.parent for module in (torch, einops)}
    (site_packages / "dependencies.pth").write_text("".join(f"{d}\n" for d in dependency_dirs))
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", dists["wheel"]])
    return python


INSTALLED_CHECKS = """
import importlib.util, pathlib
import label_merge
from label_merge._selfcheck import main
print(pathlib.Path(label_merge.__file__).resolve())
print(importlib.util.find_spec("examples"))
main(["--no-check"])
"""


def test_readme_example_and_main_run_from_the_installed_wheel(fresh_venv, tmp_path):
    readme = (ROOT / "README.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    # -I: neither the repository, PYTHONPATH nor the user's site-packages can leak in.
    lines = run([fresh_venv, "-I", "-c", example + INSTALLED_CHECKS], cwd=tmp_path).stdout.splitlines()
    assert Path(lines[0]).is_relative_to(fresh_venv.parent.parent), lines[0]  # the wheel's copy ran
    assert lines[1] == "None"  # no `examples` module: the examples need a clone, as the README says
    assert lines[2].startswith(f"label-merge {label_merge.__version__} ")
    assert "  torch    usable on every device: the PyTorch reference" in lines
