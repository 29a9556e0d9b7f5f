"""The benchmark scripts run end to end in their ``--quick`` mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_quick(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "after",
    [[], ["--after", "0.3"], ["--same-process"]],
    ids=["first-event", "later-event", "same-process"],
)
def test_bench_global_quick(after: list[str]) -> None:
    proc = _run_quick("bench_global.py", *after)
    assert proc.returncode == 0, proc.stderr
    assert "| size | torch s | ours s | time ratio (torch/ours) | torch B/param | ours B/param |" in proc.stdout
    assert "| yes |" in proc.stdout, "ours prunes exactly round(0.5 N) entries"
    assert "torch pruned exactly round(0.5 N) in every run: yes." in proc.stdout
    assert "Masks compared with torch's at 1M, in this process: the same." in proc.stdout


@pytest.mark.slow
def test_bench_global_marks_a_size_whose_kept_run_was_disturbed() -> None:
    proc = _run_quick("bench_global.py", "--max-other-load", "-1")  # every run counts as disturbed
    assert proc.returncode == 0, proc.stderr
    assert "| 1M * |" in proc.stdout
    assert "* A run kept for this size, its retries used up, shared the CPU" in proc.stdout


@pytest.mark.slow
def test_bench_inplace_quick() -> None:
    proc = _run_quick("bench_inplace.py")
    assert proc.returncode == 0, proc.stderr
    assert "| variant | ms per step | / dense | quartiles | added us per step |" in proc.stdout
    rows = [
        line.split("|")[1].strip() for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line
    ]
    assert rows[1:] == [
        *("dense", "dense_again", "unpruned", "in_place", "no_op_hooks", "mask_float32", "mask_uint8"),
        "mask_bfloat16",
        *("same_bytes", "out_of_place_hook", "fused_after_backward"),
    ]
    masking = (
        "in_place yes, mask_float32 yes, mask_uint8 yes, mask_bfloat16 yes, fused_after_backward yes, "
        "out_of_place_hook yes"
    )
    assert f"Pruned weights still zero after the timed steps: {masking}." in proc.stdout


@pytest.mark.slow
def test_bench_step_quick() -> None:
    proc = _run_quick("bench_step.py")
    assert proc.returncode == 0, proc.stderr
    if sys.platform.startswith("linux"):
        assert ", malloc thresholds fixed" in proc.stdout.splitlines()[0], "timed in the fixed heap"
    assert "| model | batch | dense ms | torch ms | ours ms | in_place ms | torch / dense |" in proc.stdout
    assert "| in_place |" in proc.stdout
    same = "torch, ours and in_place pruned the same entries of every model (but for ties at a threshold"
    assert same in proc.stdout, "checked before timing"
    assert "| variant | MiB | vs dense |" in proc.stdout
    peak_header = "| model | dense MiB | torch MiB | ours MiB | in_place MiB | ours / torch | in_place / torch |"
    assert peak_header in proc.stdout
    assert "| LeNet-300-100 | " in proc.stdout.split("dense MiB")[1], "a peak per variant, each in its own process"


@pytest.mark.slow
def test_bench_fit_quick() -> None:
    proc = _run_quick("bench_fit.py")
    assert proc.returncode == 0, proc.stderr
    assert "| variant | median s |" in proc.stdout
    assert "| PruningCallback |" in proc.stdout and "| ModelPruning |" in proc.stdout
    assert "| variant | extra peak MiB | / ModelPruning |" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "header"),
    [
        (
            "bench_step.py",
            "| model | dense MiB | torch MiB | ours MiB | in_place MiB | ours / torch | in_place / torch |",
        ),
        ("bench_fit.py", "| variant | extra peak MiB | / ModelPruning |"),
    ],
)
def test_peak_only_prints_the_peak_table_alone(script: str, header: str) -> None:
    proc = _run_quick(script, "--peak-only")
    assert proc.returncode == 0, proc.stderr
    assert header in proc.stdout
    assert "median" not in proc.stdout and " ms " not in proc.stdout, "no timing rounds"
    rows = [line for line in proc.stdout.split(header)[1].splitlines() if line.startswith("| ") and "---" not in line]
    assert rows, "a row per model or variant"
    if sys.platform.startswith("linux"):
        assert all("not measurable" not in row for row in rows)


def test_gpu_script_runs_every_part_and_counts_failures(tmp_path: Path) -> None:
    """`benchmarks/gpu.sh` with a stand-in interpreter: each part runs in order under its cap, its
    output lands in the folder given, and the exit status counts the parts that failed."""
    calls = tmp_path / "calls.txt"
    stub = tmp_path / "python"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> {calls}\n'
        'case "$*" in *"-c import xdist"*) exit 1 ;; *bench_fit.py*) echo fit broke; exit 3 ;; esac\n'
        "echo ran\n"
    )
    stub.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": str(stub), "PARTS": "tests global step fit"}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(out)], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = calls.read_text().splitlines()
    runs = [line for line in lines if "-c " not in line]
    assert [r.split()[0] for r in runs] == [
        "-m",
        "benchmarks/bench_global.py",
        "benchmarks/bench_step.py",
        "benchmarks/bench_fit.py",
    ]
    assert "--device cuda" in runs[1] and "--accelerator gpu" in runs[3]
    assert (out / "fit.txt").read_text() == "fit broke\n" and (out / "step.txt").read_text() == "ran\n"
    assert "== fit: exit 3" in proc.stdout

    bad = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(out)],
        capture_output=True,
        text=True,
        env={**env, "PARTS": "tests nonsense"},
        timeout=60,
    )
    assert bad.returncode == 64 and "unknown part nonsense" in bad.stdout
