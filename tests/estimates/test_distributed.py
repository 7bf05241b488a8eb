"""Global-batch estimation across ranks: 2 and 3 CPU processes with Gloo on localhost, with equal and
unequal batch sizes per rank (64/37, 64/37/1), must give the single-process result on the
concatenated batch — forward, and the gradients gathered back to each rank's own z, mu and logvar,
of the β-TCVAE and the grouped (HFVAE) decompositions — for MWS and MSS, in float64; a rank's loss
scaled by ``batch_share`` makes DDP's gradient average the global batch's mean; an empty rank raises
on every rank."""

import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import tcvae_kernels as tk
from tcvae_kernels.distributed import batch_share

from helpers import backends

M_LOCAL, D, N = 5, 3, 1000




def _rows(sizes, r):
    """Rank r's rows of the global batch (ranks in order)."""
    return slice(sum(sizes[:r]), sum(sizes[:r + 1]))


def _global_batch(sizes, seed: int):
    if isinstance(sizes, int):  # a world of equal ranks
        sizes = (M_LOCAL,) * sizes
    g = torch.Generator().manual_seed(seed)
    m = sum(sizes)
    mu = torch.randn(m, D, generator=g, dtype=torch.float64)
    lv = -1 + torch.rand(m, D, generator=g, dtype=torch.float64)
    z = mu + torch.exp(0.5 * lv) * torch.randn(m, D, generator=g, dtype=torch.float64)
    return z, mu, lv


GROUPS = [[0, 2], [1]]


def _objective(parts):
    # a fixed combination of the three terms, so every gradient path is exercised
    return 0.7 * parts.mi + 3.0 * parts.tc + 1.3 * parts.dim_kl


def _grouped_objective(parts):
    return 0.7 * parts.mi + 3.0 * parts.tc_between + 2.0 * parts.tc_within + 1.3 * parts.dim_kl


def _worker(rank, sizes, seed, estimator, backend, out_dir):
    world = len(sizes)
    # rendezvous through a fresh file (no port to pick, so no race for one); Gloo then binds its own
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, 'rendezvous')}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        z, mu, lv = _global_batch(sizes, seed)
        rows = _rows(sizes, rank)
        leaves = [t[rows].clone().requires_grad_() for t in (z, mu, lv)]
        parts = tk.decompose(*leaves, dataset_size=N, estimator=estimator, backend=backend,
                             process_group=dist.group.WORLD)
        loss = _objective(parts)  # this rank's mean over its queries
        grads = torch.autograd.grad(loss, leaves)
        # a parameter every rank shares (as DDP's are): its gradient, and the rank's batch_share
        theta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
        shared = tk.decompose(leaves[0].detach() * theta, leaves[1].detach() * theta, leaves[2].detach(),
                              dataset_size=N, estimator=estimator, backend=backend, process_group=dist.group.WORLD)
        rows_of = range(*rows.indices(sum(sizes)))
        share = batch_share(len(rows_of), dist.group.WORLD)
        # the scale goes in before the backward: the all-gather's backward carries each rank's scaled
        # gradient to the rows' owners
        (dtheta,) = torch.autograd.grad(share * _objective(shared), theta)
        (dtheta_unscaled,) = torch.autograd.grad(_objective(tk.decompose(
            leaves[0].detach() * theta, leaves[1].detach() * theta, leaves[2].detach(), dataset_size=N,
            estimator=estimator, backend=backend, process_group=dist.group.WORLD)), theta)
        gparts = tk.grouped_decompose(*leaves, groups=GROUPS, dataset_size=N, estimator=estimator, backend=backend,
                                      process_group=dist.group.WORLD)
        ggrads = torch.autograd.grad(_grouped_objective(gparts), leaves)
        lq = tk.log_qz(*[t.detach() for t in leaves], dataset_size=N, estimator=estimator, backend=backend,
                       process_group=dist.group.WORLD)
        torch.save({"parts": [p.detach() for p in parts], "grads": grads, "log_qz": lq.log_qz, "dtheta": dtheta,
                    "share": share, "rows": len(rows_of), "dtheta_unscaled": dtheta_unscaled,
                    "log_qz_dims": lq.log_qz_dims, "gparts": [p.detach() for p in gparts], "ggrads": ggrads},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _backends():
    return backends("cpu", exclude=("triton",))  # the interpreter is too slow for multi-process runs


def _fused_first():
    """The fused cpu backend in the default tier, the others (the reference) in the slow one."""
    return [b if b == "cpu" else pytest.param(b, marks=pytest.mark.slow) for b in _backends()]


_slow = pytest.mark.slow
SIZES = [pytest.param((64, 37), id="64-37"), pytest.param((64, 37, 1), id="64-37-1"),
         pytest.param((5, 5), id="5-5", marks=_slow), pytest.param((5, 5, 5), id="5-5-5", marks=_slow)]


@pytest.mark.parametrize("backend", _fused_first())
@pytest.mark.parametrize("estimator", ["mws", "mss"])
@pytest.mark.parametrize("sizes", SIZES)
def test_global_batch_equals_single_process(sizes, estimator, backend, tmp_path):
    if len(sizes) == 3 and estimator == "mws" and backend == "cpu":
        pytest.skip("the 3-rank uneven case runs with mss in the default tier (its last rank holds the wrap)")
    world = len(sizes)
    seed = 1234 + sum(sizes)
    mp.spawn(_worker, args=(sizes, seed, estimator, backend, str(tmp_path)), nprocs=world, join=True)
    z, mu, lv = _global_batch(sizes, seed)
    leaves = [t.clone().requires_grad_() for t in (z, mu, lv)]
    # single process on the concatenated batch: log q(z) over all M_global components, and the
    # objective summed over ranks of each rank's mean (what the ranks' backward passes add up to)
    lq = tk.log_qz(*[t.detach() for t in leaves], dataset_size=N, estimator=estimator, backend="torch")
    total, gtotal, per_rank, gper_rank = 0.0, 0.0, [], []
    lq_full, lqd_full, lqg_full = tk.log_qz(*leaves, dataset_size=N, estimator=estimator, backend="torch",
                                            groups=GROUPS)
    from tcvae_kernels.reference import log_qz_x_and_log_pz

    lqzx, lpz = log_qz_x_and_log_pz(*leaves)
    for r in range(world):
        rows = _rows(sizes, r)
        sd, sg = lqd_full[rows].sum(1), lqg_full[rows].sum(1)
        mi, dim_kl = (lqzx[rows] - lq_full[rows]).mean(), (sd - lpz[rows]).mean()
        parts = tk.Decomposition(mi, (lq_full[rows] - sd).mean(), dim_kl)
        gparts = tk.GroupedDecomposition(mi, (lq_full[rows] - sg).mean(), (sg - sd).mean(), dim_kl)
        per_rank.append(parts)
        gper_rank.append(gparts)
        total = total + _objective(parts)
        gtotal = gtotal + _grouped_objective(gparts)
    grads = torch.autograd.grad(total, leaves, retain_graph=True)
    ggrads = torch.autograd.grad(gtotal, leaves)
    # DDP's average of each rank's gradient of a shared parameter, each rank's loss scaled by its
    # batch_share, is the gradient of the global batch's mean (sum_r M_r / M_global · objective_r)
    theta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    glq, glqd = tk.log_qz(z * theta, mu * theta, lv, dataset_size=N, estimator=estimator, backend="torch")
    gzx, gpz = log_qz_x_and_log_pz(z * theta, mu * theta, lv)
    gsd = glqd.sum(1)
    global_mean = _objective(tk.Decomposition((gzx - glq).mean(), (glq - gsd).mean(), (gsd - gpz).mean()))
    (want,) = torch.autograd.grad(global_mean, theta)
    held = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for r, got in enumerate(held):
        assert got["rows"] == sizes[r] and got["share"] == pytest.approx(world * sizes[r] / sum(sizes), rel=1e-15)
    ddp = sum(got["dtheta"] for got in held) / world
    assert abs(ddp.item() - want.item()) < 1e-10 * max(1.0, abs(want.item()))
    if len(set(sizes)) > 1:  # unscaled, DDP's average weights the ranks' queries unequally
        assert abs(sum(got["dtheta_unscaled"] for got in held).item() / world - want.item()) > 1e-6
    for r in range(world):
        got = held[r]
        rows = _rows(sizes, r)
        for a, b in zip(got["parts"] + got["gparts"], list(per_rank[r]) + list(gper_rank[r])):
            assert abs(a.item() - b.item()) < 1e-10
        for a, b in zip(got["ggrads"], ggrads):
            assert torch.allclose(a, b[rows], rtol=0, atol=1e-10), (a - b[rows]).abs().max()
        assert torch.allclose(got["log_qz"], lq.log_qz[rows], rtol=0, atol=1e-10)
        assert torch.allclose(got["log_qz_dims"], lq.log_qz_dims[rows], rtol=0, atol=1e-10)
        for a, b in zip(got["grads"], grads):
            assert torch.allclose(a, b[rows], rtol=0, atol=1e-10), (a - b[rows]).abs().max()
    # and the global-batch estimate differs from what each rank would compute alone
    first = _rows(sizes, 0)
    alone = tk.log_qz(z[first], mu[first], lv[first], dataset_size=N, estimator=estimator)
    assert not torch.allclose(alone.log_qz, lq.log_qz[first])


def _empty_worker(rank, sizes, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, 'rendezvous')}", rank=rank,
                            world_size=len(sizes), timeout=datetime.timedelta(seconds=120))
    try:
        z, mu, lv = (t[_rows(sizes, rank)] for t in _global_batch(sizes, 99))
        try:
            tk.decompose(z, mu, lv, dataset_size=N, process_group=dist.group.WORLD)
            message = None
        except ValueError as exc:
            message = str(exc)
        with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as fh:
            fh.write(repr(message))
    finally:
        dist.destroy_process_group()


def test_an_empty_rank_raises_on_every_rank(tmp_path):
    """A rank with no rows: every rank raises the same ValueError (none waits in a collective)."""
    sizes = (4, 0)
    mp.spawn(_empty_worker, args=(sizes, str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        text = (tmp_path / f"rank{r}.txt").read_text()
        assert "empty batch" in text and "[4, 0]" in text, text


def _bank_worker(rank, world, seed, backend, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, 'rendezvous')}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        loss = tk.BetaTCVAELoss(dataset_size=N, backend=backend, process_group=dist.group.WORLD,
                                bank_size=3 * world * M_LOCAL, warn_regime=False)
        rows = slice(rank * M_LOCAL, (rank + 1) * M_LOCAL)
        for step in range(2):  # the second step meets the first step's global batch in the bank
            leaves = [t[rows].clone().requires_grad_() for t in _global_batch(world, seed + step)]
            penalty = loss(*leaves)
        grads = torch.autograd.grad(penalty, leaves)
        torch.save({"penalty": penalty.detach(), "grads": grads, "bank": loss.bank.components()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("backend", _fused_first())
def test_bank_with_process_group_equals_single_process(backend, tmp_path):
    """Every rank pushes the gathered global batch, so the banks are equal, and the second step's
    estimate on each rank equals one process's on the global batch with the first global batch as bank."""
    world, seed = 2, 4321
    mp.spawn(_bank_worker, args=(world, seed, backend, str(tmp_path)), nprocs=world, join=True)
    _, mu0, lv0 = _global_batch(world, seed)
    leaves = [t.clone().requires_grad_() for t in _global_batch(world, seed + 1)]
    bank = tk.ComponentBank(3 * world * M_LOCAL)
    bank.push(mu0, lv0)
    lq, lqd = tk.log_qz(*leaves, dataset_size=N, backend="torch", bank=bank)
    from tcvae_kernels.reference import log_qz_x_and_log_pz

    lqzx, lpz = log_qz_x_and_log_pz(*leaves)
    per_rank = []
    for r in range(world):
        rows = slice(r * M_LOCAL, (r + 1) * M_LOCAL)
        sd = lqd[rows].sum(1)
        per_rank.append((lqzx[rows] - lq[rows]).mean() + 6.0 * (lq[rows] - sd).mean() + (sd - lpz[rows]).mean())
    grads = torch.autograd.grad(sum(per_rank), leaves)
    held = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for r, got in enumerate(held):
        rows = slice(r * M_LOCAL, (r + 1) * M_LOCAL)
        assert abs(got["penalty"].item() - per_rank[r].item()) < 1e-10
        for a, b in zip(got["grads"], grads):
            assert torch.allclose(a, b[rows], rtol=0, atol=1e-10), (a - b[rows]).abs().max()
    both_steps = [torch.cat([mu0, leaves[1].detach()]), torch.cat([lv0, leaves[2].detach()])]
    for got in held:  # the same bank on every rank: both global batches, in push order
        assert all(torch.equal(a, b) for a, b in zip(got["bank"], both_steps))


def test_process_group_requires_initialised_distributed():
    z = torch.randn(4, 2)
    with pytest.raises(RuntimeError, match="not initialized"):
        tk.decompose(z, z, z, dataset_size=100, process_group=object())


@pytest.mark.slow  # torchrun and two fresh interpreters (~17 s); the 2-rank paths run in mp.spawn tests above
def test_torchrun_example_runs_on_cpu():
    import subprocess
    import sys

    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    # --standalone: torchrun binds a free port for its rendezvous itself
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(root, "python", "distributed_tcvae.py"), "--steps", "50"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "TC (global batch of 256)" in res.stdout
