"""The layer contracts of ``[tool.importlinter]`` in pyproject.toml: the package keeps them, and a wrong import
breaks them (checked on a copy of the package, so the real one is never touched)."""

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SETTINGS = tomllib.loads((REPO / "pyproject.toml").read_text())
CONTRACTS = {c["id"]: c["name"] for c in SETTINGS["tool"]["importlinter"]["contracts"]}
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def lint_imports(root: Path, *contracts: str) -> subprocess.CompletedProcess:
    """``lint-imports`` on the ``streamchar`` package under ``root`` with ``root/pyproject.toml``'s contracts
    (all of them, or those whose ids are given)."""
    args = ["--no-cache", "--no-logo", "--config", str(root / "pyproject.toml")]
    args += [a for c in contracts for a in ("--contract", c)]
    env = {**os.environ, "PYTHONPATH": str(root)}  # the copy under root, not the installed package
    return subprocess.run([sys.executable, "-c", LINT, *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_the_package_keeps_its_layer_contracts():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in CONTRACTS.values():
        assert f"{name} KEPT" in result.stdout


@pytest.mark.parametrize(
    "where, wrong_import, broken",
    [
        ("engine", "streamchar.training", ["inference", "layers"]),  # inference reaching into training
        ("serve", "streamchar.eval", ["inference", "layers"]),
        ("denoiser", "streamchar.data.latents", ["denoiser"]),  # a model that knows about files
        ("data", "streamchar.engine", ["layers"]),  # a lower layer importing a higher one
    ],
)
def test_a_wrong_import_breaks_the_contracts_that_forbid_it(tmp_path, where, wrong_import, broken):
    shutil.copytree(
        REPO / "streamchar", tmp_path / "streamchar", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "streamchar" / where / "wrong_way.py").write_text(
        f"import {wrong_import}  # deliberately wrong\n"
    )
    result = lint_imports(tmp_path, *broken)

    assert result.returncode != 0, result.stdout
    for contract in broken:
        assert f"{CONTRACTS[contract]} BROKEN" in result.stdout, result.stdout
    assert f"streamchar.{where}.wrong_way -> {wrong_import} (l.1)" in result.stdout, result.stdout


def _streamchar_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """Every ``from streamchar... import names`` and ``import streamchar...`` in a file, at any depth (handlers
    and benchmarks import inside functions): ``(line, module, names)``."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "streamchar":
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "streamchar"]
    return found


def test_every_import_of_the_package_resolves():
    """A moved module or function leaves no stale import behind in the package, the tests, the benchmarks or
    the scripts, not even one inside a function that only runs on a GPU or with a corpus."""
    import importlib

    files = [
        p for folder in ("streamchar", "tests", "bench", "scripts") for p in (REPO / folder).rglob("*.py")
    ]
    stale = []
    for path in files:
        for line, module, names in _streamchar_imports(path):
            try:
                owner = importlib.import_module(module)
            except ImportError as err:
                stale.append(f"{path.relative_to(REPO)}:{line}: {module} ({err})")
                continue
            for name in names:
                if not hasattr(owner, name) and importlib.util.find_spec(f"{module}.{name}") is None:
                    stale.append(f"{path.relative_to(REPO)}:{line}: {module}.{name}")
    assert not stale, "stale imports:\n" + "\n".join(stale)
