"""``family="laplace"``: Laplace posteriors (the authors' ``-dist laplace``), the third argument a
log-scale b, l = -|z - mu|·e^-b - b - log 2 (tcvae_kernels/reference.py). Every fused backend (cpu,
triton under the interpreter, the CUDA kernels' emulation with and without split-K) against the
float64 reference under the tolerance rule of tcvae_kernels/testing.py (the same rule as the
Normal's: the reference's own float32 error, the L1 mass of the Laplace gradient terms), forward and
all three gradients: odd sizes, K != M, non-contiguous inputs, log-scales from -20 to 20 with z far
from every component (the exact fallback), the subgradient 0 at z = mu, float64 gradcheck away from
the kink, NaN/inf, misuse; and the telescoping identity MI + TC + dim-KL = E[log q(z|x) - log p(z)]
for each prior, against the authors' formulas written out."""

import math

import pytest
import torch
from torch import distributions as D

import tcvae_kernels as tk
from tcvae_kernels.estimators import log_weights, weight_matrix
from tcvae_kernels.testing import check_backend, random_inputs

from helpers import assert_ok, backends, fresh_seed, interpreter_shapes, make_inputs, targets

LAPLACE = dict(family="laplace")
TARGETS = targets(fused_only=True, emulation=(1, 3))
SHAPES = [(1, 1, 3, "mws"), (7, 7, 1, "mss"), (7, 7, 10, "mws"), (129, 129, 33, "mss"), (5, 17, 3, "mss"),
          (40, 9, 33, "uniform")]


def _name(backend):
    return backend if isinstance(backend, str) else "cpu"  # an emulation object: its name is not a backend's


def _shapes(shapes, backend, device):
    return interpreter_shapes(shapes, backend if isinstance(backend, str) else "cpu", device)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kind", ["normal", "noncontiguous", "extreme"])
@pytest.mark.parametrize("backend,device", TARGETS)
def test_matches_reference(backend, device, kind, dtype):
    g = torch.Generator().manual_seed(fresh_seed())
    for m, k, d, est in _shapes(SHAPES, backend, device):
        z, mu, b = random_inputs(m, k, d, kind=kind, dtype=dtype, device=device, generator=g, **LAPLACE)
        if kind == "extreme" and k > 1:
            b[0], b[1] = -20.0, 20.0
        w = log_weights(est, k, 10 * max(m, k))
        assert_ok(check_backend(backend, z, mu, b, w, **LAPLACE), f"{kind} {m}x{k}x{d} {est}")


@pytest.mark.parametrize("backend,device", TARGETS)
def test_far_from_every_component_is_finite_and_exact(backend, device):
    """Every other query 1e3 from every mean with log-scales in [-2, 1]: l < -1e3·e^-1 ≈ -368 per
    dimension, so those rows' marginal sums underflow float32 (below 2^-126) and take the exact
    fallback (the CPU kernel's saved state says so), the other rows not."""
    ((m, k, d),) = _shapes([(33, 33, 10)], backend, device)
    z, mu, b = make_inputs(m, k, d, dtype=torch.float32, device=device, **LAPLACE)
    z[::2] += 1e3
    w = log_weights("mss", k, 1000)
    assert_ok(check_backend(backend, z, mu, b, w, **LAPLACE), "far")
    be = tk.backends.base.get_backend(backend) if isinstance(backend, str) else backend
    assert all(torch.isfinite(t).all() for t in be.log_qz(z, mu, b, w, family="laplace"))
    if backend == "cpu":
        aux_qd = torch.ops.tcvae.log_qz(z, mu, b, *w.op_args(), False, "laplace")[3]
        exact = (aux_qd[..., 0] != 0).all(dim=1)  # m != 0: the exact two-pass path
        assert exact[::2].all() and not exact[1::2].any()


@pytest.mark.parametrize("backend,device", TARGETS)
def test_subgradient_at_the_kink_is_zero(backend, device):
    """z_i = mu_i exactly (and duplicated components, so z sits on several kinks): the gradients
    through |z - mu| take the subgradient 0 there, as the reference (torch's d|x|/dx at 0) does."""
    z, mu, b = make_inputs(9, 9, 3, device=device, **LAPLACE)
    mu[4:] = mu[:5].clone()
    z = mu.clone()  # every query on its own component's kink
    z[:, 0] = z[:, 0] + 0.25  # dimension 0 off the kink: both cases in one tensor
    assert_ok(check_backend(backend, z, mu, b, log_weights("mss", 9, 90), **LAPLACE), "kink f64")
    assert_ok(check_backend(backend, z.float(), mu.float(), b.float(), log_weights("mss", 9, 90), **LAPLACE),
              "kink f32")


#: the Triton interpreter's gradcheck costs 13 s: slow tier (its float64 gradients are checked at
#: 1e-8 by the tolerance rule above in the default tier)
GRADCHECK_TARGETS = [pytest.param(*p.values, id=p.id, marks=[*p.marks, *([pytest.mark.slow] if p.values[0] == "triton" else [])])
                     for p in TARGETS]


@pytest.mark.parametrize("backend,device", GRADCHECK_TARGETS)
def test_gradcheck_float64_away_from_the_kink(backend, device):
    z, mu, b = make_inputs(5, 6, 3, device=device, **LAPLACE)
    while (z[:, None] - mu[None]).abs().min() <= 1e-3:  # finite differences of step 1e-6 stay on one side
        z = z + 1e-2 * torch.rand(z.shape, dtype=z.dtype).to(z.device)
    be = tk.backends.base.get_backend(backend) if isinstance(backend, str) else backend
    w = log_weights("mss", 6, 50)
    leaves = tuple(t.requires_grad_() for t in (z, mu, b))
    assert torch.autograd.gradcheck(lambda *a: be.log_qz(*a, w, family="laplace"), leaves)


@pytest.mark.parametrize("backend,device", targets(fused_only=True))
def test_nan_and_inf_propagate_like_the_reference(backend, device):
    z, mu, b = make_inputs(6, 6, 3, dtype=torch.float32, device=device, **LAPLACE)
    z[2, 1] = float("nan")
    z[4, 0] = float("inf")
    mu[5, 2] = float("nan")
    got = tk.log_qz(z, mu, b, dataset_size=50, backend=backend, **LAPLACE)
    ref = tk.log_qz(z, mu, b, dataset_size=50, backend="torch", **LAPLACE)
    for a, r in zip(got, ref):
        assert torch.equal(torch.isnan(a), torch.isnan(r)) and torch.equal(torch.isinf(a), torch.isinf(r))
        fin = torch.isfinite(r)
        assert torch.allclose(a[fin], r[fin], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,device", targets(fused_only=True))
def test_grouped_pass(backend, device):
    """log_qz_groups (one fused pass on cpu, per-group passes elsewhere) for the Laplace family."""
    ((m, k, d),) = _shapes([(40, 40, 9)], backend, device)
    d = min(d, 9)
    z, mu, b = make_inputs(m, k, d, dtype=torch.float32, device=device, **LAPLACE)
    groups = [[0, d - 1], list(range(1, d - 1))]
    assert_ok(check_backend(backend, z, mu, b, log_weights("mss", k, 400), groups=groups, **LAPLACE), "groups")


def test_the_families_differ_and_the_names_are_checked():
    z, mu, b = make_inputs(8, 8, 3)
    n = tk.log_qz(z, mu, b, dataset_size=80).log_qz
    lap = tk.log_qz(z, mu, b, dataset_size=80, family="laplace").log_qz
    assert not torch.allclose(n, lap)
    for bad in ("gaussian", "Laplace", None, 1):
        with pytest.raises(ValueError, match="family must be one of"):
            tk.log_qz(z, mu, b, dataset_size=80, family=bad)
        with pytest.raises(ValueError, match="family must be one of"):
            tk.BetaTCVAELoss(dataset_size=80, family=bad)
    with pytest.raises(ValueError, match="family must be one of"):
        tk.EstimatorOptions(dataset_size=80, family="cauchy").validate()
    loss = tk.BetaTCVAELoss(dataset_size=80, family="laplace", warn_regime=False)
    assert loss.options.family == "laplace" and "family='laplace'" in repr(loss)
    with pytest.raises(ValueError, match="family must be one of"):
        loss.options = loss.options.replace(family="t")
    if "cpu" in tk.available_backends("cpu"):  # the op refuses an unknown family by itself too
        with pytest.raises(Exception, match="family must be 'normal' or 'laplace'"):
            torch.ops.tcvae.log_qz(z, mu, b, [-4.0, -3.0, -2.0], 0, True, "cauchy")


def test_misuse_is_refused_as_for_the_normal():
    """Shapes, dtypes, devices: the same checks and messages (the family changes only the math)."""
    z, mu, b = make_inputs(8, 8, 3)
    with pytest.raises(TypeError, match="share one dtype"):
        tk.log_qz(z, mu, b.float(), dataset_size=80, family="laplace")
    with pytest.raises(ValueError, match="same shape"):
        tk.log_qz(z, mu, b[:, :2], dataset_size=80, family="laplace")
    with pytest.raises(ValueError, match="M <= K"):
        tk.decompose(z, mu[:4], b[:4], dataset_size=80, family="laplace")
    with pytest.raises(ValueError, match="contains NaN"):
        tk.log_qz(z, mu, b.clone().fill_(float("nan")), dataset_size=80, family="laplace", check_finite=True)


# ------------------------------------------------------------------ the authors' formulas, identity


def _authors_laplace_log_density(x, mu, logscale):
    """Chen et al.'s lib/dist.py Laplace.log_density, written out: -|x - mu|/scale - log(2·scale)."""
    scale = torch.exp(logscale)
    return -(x - mu).abs() / scale - torch.log(2 * scale)


def _authors_decomposition(z, mu, b, n, prior_log_p):
    """vae_quant.py's estimates on a batch (MSS with the diagonal fix), in float64, from the dense
    [M, M, D] tensor of log densities: (MI, TC, dim-KL) means."""
    m = z.shape[0]
    l = _authors_laplace_log_density(z[:, None], mu[None], b[None])  # [M, M, D]
    w = weight_matrix(log_weights("mss", m, n), m, m, dtype=torch.float64)  # the stratified weights
    logqz = torch.logsumexp(l.sum(2) + w, dim=1)
    logqz_prod = torch.logsumexp(l + w[..., None], dim=1).sum(1)
    logqz_x = _authors_laplace_log_density(z, mu, b).sum(1)
    logpz = prior_log_p(z)
    return (logqz_x - logqz).mean(), (logqz - logqz_prod).mean(), (logqz_prod - logpz).mean(), (logqz_x - logpz).mean()


class LearnedFactorialPrior(torch.nn.Module):
    """A learned factorial prior: a Laplace per dimension with learned location and log-scale."""

    def __init__(self, d):
        super().__init__()
        self.loc = torch.nn.Parameter(torch.full((d,), 0.2, dtype=torch.float64))
        self.log_scale = torch.nn.Parameter(torch.full((d,), 0.3, dtype=torch.float64))

    def log_prob(self, z):
        return D.Laplace(self.loc, self.log_scale.exp()).log_prob(z)


@pytest.mark.parametrize("backend", backends("cpu", exclude=("triton",)))  # the interpreter: too slow here
def test_terms_match_the_authors_formulas_and_telescope(backend):
    z, mu, b = make_inputs(48, 48, 5, **LAPLACE)
    priors = [
        ("normal", lambda x: (-0.5 * x * x - 0.5 * math.log(2 * math.pi)).sum(1)),
        ("laplace", lambda x: (-x.abs() - math.log(2.0)).sum(1)),
        (LearnedFactorialPrior(5), None),
    ]
    for prior, log_p in priors:
        log_p = log_p or (lambda x, p=prior: p.log_prob(x).sum(1))
        parts = tk.decompose(z, mu, b, dataset_size=1000, prior=prior, backend=backend, **LAPLACE)
        mi, tc, dkl, total = (t.item() for t in _authors_decomposition(z, mu, b, 1000, log_p))
        for got, want in zip(parts, (mi, tc, dkl)):
            assert got.item() == pytest.approx(want, abs=1e-10, rel=1e-10), prior
        assert (parts.mi + parts.tc + parts.dim_kl).item() == pytest.approx(total, abs=1e-12, rel=1e-12), prior


def test_a_learned_prior_and_laplace_posteriors_train_through_the_loss():
    z, mu, b = make_inputs(64, 64, 4, **LAPLACE)
    mu = mu.clone().requires_grad_()
    prior = LearnedFactorialPrior(4)
    loss_fn = tk.BetaTCVAELoss(dataset_size=10_000, prior=prior, family="laplace", warn_regime=False)
    opt = torch.optim.Adam([*loss_fn.parameters(), mu], lr=0.05)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(z, mu, b)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in (*prior.parameters(), mu))
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < first
