"""scripts/gpu_check.sh --dry-run: every step walked, outputs under $OUT, 'no CUDA' said cleanly on the CPU."""

import os
import subprocess
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def _check(tmp_path, *args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OUT": str(tmp_path / "out")})


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the dry run names the GPU instead")
def test_dry_run_walks_every_step_and_says_no_cuda(tmp_path):
    r = _check(tmp_path, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "no CUDA device: a dry run walks the steps without running them" in r.stdout
    for n in range(1, 8):
        assert f"== {n}. " in r.stdout
    assert r.stdout.count("would run:") == 7
    assert "device=cuda" in r.stdout and "--nproc_per_node=2" in r.stdout  # the CUDA table and the DDP check
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["gpu_check.log"]  # everything under $OUT


def test_one_step_per_invocation_and_bad_arguments(tmp_path):
    r = _check(tmp_path, "--dry-run", "4")
    assert r.returncode == 0 and "== 4. " in r.stdout and "== 2. " not in r.stdout
    bad = _check(tmp_path, "9")
    assert bad.returncode == 2 and "unknown argument '9'" in bad.stderr
