"""``callbacks/`` stays self-contained: it imports only torch, lightning (typing_extensions, which lightning depends
on), safetensors and the standard library, itself only by relative imports, and works when copied elsewhere."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

CALLBACKS = Path(__file__).resolve().parents[1] / "callbacks"
ALLOWED = {"torch", "lightning", "typing_extensions", "safetensors"}


def imported_packages(path: Path) -> dict[str, int]:
    """Top-level package of every absolute import in the module (lazy ones in functions too), to its line."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        for name in names:
            found.setdefault(name.split(".")[0], node.lineno)
    return found


def test_callbacks_import_only_torch_lightning_safetensors_and_the_standard_library():
    modules = sorted(CALLBACKS.rglob("*.py"))
    assert len(modules) > 2
    allowed = ALLOWED | set(sys.stdlib_module_names) | {"__future__"}
    outside = [f"{path.relative_to(CALLBACKS.parent)}:{line}: import {package}"
               for path in modules for package, line in imported_packages(path).items() if package not in allowed]
    assert not outside, "callbacks/ must stay self-contained (relative imports inside it):\n" + "\n".join(outside)


def test_a_copy_of_the_folder_under_another_name_works(tmp_path):
    shutil.copytree(CALLBACKS, tmp_path / "vendored_callbacks", ignore=shutil.ignore_patterns("__pycache__"))
    script = f"""
import sys
sys.path.insert(0, {str(tmp_path)!r})
import torch
from vendored_callbacks import WeightSaliencyCallback, load_mask, saliency_mask, save_mask

mask = saliency_mask({{"w": torch.tensor([3.0, 1.0, 2.0, 0.5])}}, ratio=0.5)
save_mask("mask.safetensors", mask, {{"ratio": 0.5}})
assert torch.equal(load_mask("mask.safetensors")[0]["w"], mask["w"])
assert WeightSaliencyCallback.__module__ == "vendored_callbacks.weight_saliency.callback"
assert not [name for name in sys.modules if name.split(".")[0] in ("salun_lightning", "callbacks")]
"""
    # -I: neither this checkout (working directory, PYTHONPATH) nor the script's directory on the path: the copy only
    (tmp_path / "check.py").write_text(script)
    result = subprocess.run([sys.executable, "-I", "check.py"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
