"""The Lightning example (python/lightning_tcvae.py) runs a few steps on the CPU: in one process,
and under Lightning's DDP strategy with two Gloo processes, where the loss estimates q(z) from the
global batch; MI, TC and dim-KL are logged every step; the loss's component bank fills with the
global batch."""

import csv
import glob
import math
import os
import subprocess
import sys

import pytest

pytest.importorskip("lightning")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


# two processes (Lightning's DDP over Gloo) in the slow tier: the 2-rank Gloo path of the loss is the
# default tier's through test_distributed
@pytest.mark.parametrize("devices", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_lightning_example_trains_and_logs(tmp_path, devices):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "python", "lightning_tcvae.py"), "--steps", "4",
                        "--batch", "32", "--devices", str(devices), "--accelerator", "cpu", "--out", str(tmp_path), "--bank", "200"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"after 4 steps on {devices} device(s)" in r.stdout
    assert ("global batch of 2 ranks" in r.stdout) == (devices == 2)
    # the bank takes the global batch each step: 4 × 32 × devices rows pushed
    assert f"component bank: {min(200, 4 * 32 * devices)} of 200 filled" in r.stdout
    (path,) = glob.glob(str(tmp_path / "tcvae" / "version_*" / "metrics.csv"))
    rows = [row for row in csv.DictReader(open(path)) if row.get("tc")]
    assert len(rows) == 4
    for row in rows:
        for key in ("mi", "tc", "dim_kl", "recon"):
            assert math.isfinite(float(row[key])), row
