"""Every script in ``examples/`` runs in its quick mode, writing only into its working folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# script -> (quick-mode arguments, lines its output must contain)
QUICK: dict[str, tuple[list[str], list[str]]] = {
    "quickstart.py": (
        ["--max-epochs", "2", "--limit-batches", "2"],
        ["test accuracy: ", "sparsity of the pruned weights: 0.9000"],
    ),
    "custom_method.py": (
        ["--limit-batches", "1"],
        [
            # The tutorial's mask, tensor([0., 1., 0., 1., ...]), as a bool mask; then every other survivor.
            f"after epoch 0: {torch.arange(10) % 2 == 1}",
            f"after epoch 1: {torch.arange(10) % 4 == 3}",
            "prune.is_pruned: True",
        ],
    ),
    "global_vs_layer.py": (["--quick"], ["| sparsity | global test acc | layer test acc |", "| 0.50 |", "| 0.90 |"]),
    "lottery_ticket.py": (["--quick", "--out", "."], ["| round |"]),
}


def test_every_example_has_a_quick_mode():
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(QUICK)


@pytest.mark.parametrize("script", [pytest.param(s, id=s.removesuffix(".py")) for s in QUICK])
def test_example_runs(script: str, tmp_path: Path):
    args, expected = QUICK[script]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: more threads only contend with the test runner
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for line in expected:
        assert line in result.stdout, result.stdout


def test_readme_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Python blocks, in order, with a tiny ``model`` and its data for what they leave open."""
    from tests.helpers import make_loader, make_model

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)  # the Trainer's default logger and checkpoints land here
    namespace: dict[str, object] = {"model": make_model(), "datamodule": make_loader()}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    module = namespace["trainer"].lightning_module
    weights = [module.fc1.weight, module.fc2.weight]  # plain again after fit, 90% zero together
    assert sum(int((w == 0).sum()) for w in weights) == round(0.9 * sum(w.numel() for w in weights))


def test_readme_lottery_table_is_the_committed_results() -> None:
    """The README's lottery-ticket table, cell by cell, from `examples/results/lottery_results.csv`."""
    import csv
    import statistics

    with open(ROOT / "examples" / "results" / "lottery_results.csv") as f:
        rows = list(csv.DictReader(f))
    cells: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        cells.setdefault((row["arm"], row["remaining"]), []).append(100 * float(row["test_acc"]))
    readme = (ROOT / "README.md").read_text()
    for arm, label in (("ticket", "rewound ticket"), ("control", "random re-init")):
        line = next(line for line in readme.splitlines() if line.startswith(f"| {label} |"))
        written = [cell.strip() for cell in line.strip("|").split("|")[1:]]
        remaining = sorted({r for a, r in cells if a == arm}, key=float, reverse=True)
        expected = [f"{statistics.mean(cells[arm, r]):.1f}±{statistics.stdev(cells[arm, r]):.1f}" for r in remaining]
        assert written == expected, label
