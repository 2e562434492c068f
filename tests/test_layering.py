"""The layer order: common/ (the shared core) imports no family package, and no family imports another; the main
job (mmlm_jax) sits above them all."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAMILIES = ("flamingo_jax", "llava_jax", "vita_jax")


def imported_packages(package: str) -> dict[str, set[str]]:
    """file -> the top-level packages it imports (module level or inside functions)."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        out[str(path.relative_to(ROOT))] = names
    return out


@pytest.mark.parametrize("package", ("common",) + FAMILIES)
def test_each_layer_imports_only_the_layers_below(package):
    forbidden = set(FAMILIES + ("mmlm_jax",)) - {package}
    offenders = {f: sorted(names & forbidden) for f, names in imported_packages(package).items() if names & forbidden}
    assert not offenders, f"{package} must not import {sorted(forbidden)}: {offenders}"
