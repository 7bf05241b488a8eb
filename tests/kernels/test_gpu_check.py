"""bench/gpu_check.sh's control flow, without a GPU (--dry-run): every stage of the first call runs
its commands against the CPU or says why it skips them, each writes its result files and its line
of summary.md, and a mistyped stage stops the script before anything runs. The GPU gets one call
of a few minutes: the script must not fail there for a typo."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(ROOT, "bench", "gpu_check.sh")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def _run(tmp_path, *args):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_OUT": str(tmp_path)}
    env.pop("OUT", None)
    return subprocess.run(["bash", SCRIPT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_first_call_dry_run_runs_every_stage(tmp_path):
    r = _run(tmp_path, "--dry-run")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [line.split("|")[1:3] for line in (tmp_path / "summary.md").read_text().splitlines()[2:]]
    got = {name.strip(): result.strip() for name, result in rows}
    assert list(got) == ["build", "verify", "kernels", "step"]  # the first call's stages, in order
    assert got["build"].startswith("skipped: dry run")
    assert got["verify"] == got["kernels"] == got["step"] == "ok", got
    assert "all checks passed" in (tmp_path / "verify.txt").read_text()
    assert "one-time checks" in (tmp_path / "verify.txt").read_text()
    assert "| triton | 10 | _fwd_kernel |" in (tmp_path / "kernels.md").read_text()
    step = (tmp_path / "step.md").read_text()
    assert "| 128 | eager |" in step and "| 128 | fullgraph |" in step and "fails" not in step, step
    assert len(os.listdir(tmp_path)) <= 8  # what one call of the device tool brings back


def test_second_call_stages_skip_with_a_reason(tmp_path):
    r = _run(tmp_path, "--dry-run", "test", "sanitize", "bench")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = (tmp_path / "summary.md").read_text()
    for stage in ("test", "sanitize", "bench"):
        assert f"| {stage} | skipped: dry run" in summary


def test_a_mistyped_stage_stops_before_anything_runs(tmp_path):
    r = _run(tmp_path, "--dry-run", "verify", "kernel")
    assert r.returncode == 2 and "unknown stage or option 'kernel'" in r.stderr
    assert not (tmp_path / "summary.md").exists()
