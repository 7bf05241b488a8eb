"""The losses inside a compiled training step (CPU inductor): one graph with ``fullgraph=True``, no
recompile while the warm-up ramps and the bank fills and wraps, the eager loss's numbers and
gradients, state updated in place (``step``, the bank), the host checks (regime warning,
``check_finite``) still reaching the user; a resumed run continues bitwise; ``import tcvae_kernels``
loads neither dynamo nor triton.

Tolerance, compiled against eager (float32): inductor fuses and reorders the float32 reductions of the
network and of the decomposition (sums over a batch of 16 and over D), a few ulp of the terms each:
relative 1e-5 of the loss (measured 3e-7), gradients within 1e-5 of their largest entry.
"""

import os
import subprocess
import sys
import warnings

import pytest
import torch

import tcvae_kernels as tk
from tcvae_kernels.loss import EstimatorRegimeWarning

M, D, X = 16, 4, 8
STEPS = 7  # warm-up over 4 calls; a bank of 40 fills at the 3rd push and wraps after


def _loss(kind):
    if kind == "betatcvae":
        return tk.BetaTCVAELoss(dataset_size=1000, warmup_steps=4, warn_regime=False)
    if kind == "betatcvae-bank":
        return tk.BetaTCVAELoss(dataset_size=1000, warmup_steps=4, bank_size=40)
    if kind == "hfvae-bank":
        return tk.HFVAELoss(dataset_size=1000, groups=[1, 3], warmup_steps=4, bank_size=40, family="laplace", warn_regime=False)
    if kind == "betavae":
        return tk.BetaVAELoss(4.0, warmup_steps=4)
    return tk.FactorVAELoss(latent_dim=D, discriminator=torch.nn.Sequential(torch.nn.Linear(D, 8), torch.nn.ReLU(),
                                                                             torch.nn.Linear(8, 2)))


class _Step:
    """A VAE step on fixed parameters (no optimizer: every step's numbers compare with eager's)."""

    def __init__(self, kind):
        torch.manual_seed(0)
        self.enc, self.dec = torch.nn.Linear(X, 2 * D), torch.nn.Linear(D, X)
        self.loss_fn = _loss(kind)
        self.params = [*self.enc.parameters(), *self.dec.parameters()]

    def forward(self, x, eps):
        mu, lv = self.enc(x).chunk(2, dim=1)
        z = mu + eps * torch.exp(0.5 * lv)
        return (self.dec(z) - x).pow(2).sum(dim=1).mean() + self.loss_fn(z, mu, lv)

    def forward_backward(self, x, eps):
        loss = self.forward(x, eps)
        loss.backward()
        return loss.detach()


def _inputs(steps=STEPS):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(M, X, generator=g), torch.randn(M, D, generator=g)) for _ in range(steps)]


@pytest.fixture
def no_recompile():
    """dynamo from scratch; a recompile is an error."""
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True, trace_autograd_ops=True):
        yield
    torch._dynamo.reset()


def _run(step, fn, data):
    out = []
    for x, eps in data:
        for p in step.params:
            p.grad = None
        loss = fn(x, eps)
        out.append((loss.detach(), [p.grad.clone() if p.grad is not None else None for p in step.params]))
    return out


@pytest.mark.parametrize("kind", ["betatcvae", "betatcvae-bank", "hfvae-bank", "betavae", "factorvae"])
def test_forward_and_backward_compile_once_and_match_eager(kind, no_recompile):
    from torch._dynamo.utils import counters

    eager, compiled = _Step(kind), _Step(kind)
    data = _inputs()
    want = _run(eager, eager.forward_backward, data)
    counters.clear()
    got = _run(compiled, torch.compile(compiled.forward_backward, fullgraph=True), data)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    for (lw, gw), (lg, gg) in zip(want, got):
        assert torch.allclose(lg, lw, rtol=1e-5, atol=0), (lg, lw)
        for a, b in zip(gg, gw):
            assert torch.allclose(a, b, rtol=0, atol=1e-5 * b.abs().max()), (a - b).abs().max()
    for name, buf in eager.loss_fn.named_buffers():  # the state moved the same way: step, the bank
        assert torch.allclose(dict(compiled.loss_fn.named_buffers())[name], buf, rtol=1e-5, atol=1e-6), name
    if "bank" in kind:
        assert int(compiled.loss_fn.bank.pushes) == STEPS and len(compiled.loss_fn.bank) == 40
    if kind != "factorvae":
        assert int(compiled.loss_fn.step) == STEPS


def test_the_forward_alone_compiles_once(no_recompile):
    from torch._dynamo.utils import counters

    eager, compiled = _Step("betatcvae-bank"), _Step("betatcvae-bank")
    data = _inputs()
    counters.clear()
    fn = torch.compile(compiled.forward, fullgraph=True)
    for x, eps in data:
        torch.testing.assert_close(fn(x, eps), eager.forward(x, eps), rtol=1e-5, atol=0)
    assert counters["stats"]["unique_graphs"] == 1


def test_a_whole_step_with_the_optimizer_breaks_only_where_torch_does(no_recompile):
    """torch.compile(step) of forward, backward and Adam (no fullgraph: torch's optimizer.step breaks
    the graph by design): the loss adds no graph break and no recompile to those of a plain loss."""
    from torch._dynamo.utils import counters

    def breaks(kind):
        torch._dynamo.reset()
        counters.clear()
        step = _Step(kind)
        opt = torch.optim.Adam(step.params, lr=1e-3)

        def train(x, eps):
            loss = step.forward_backward(x, eps)
            opt.step()
            opt.zero_grad()
            return loss

        fn = torch.compile(train)
        for x, eps in _inputs(4):
            fn(x, eps)
        return sum(counters["graph_break"].values())

    with_loss = breaks("betatcvae-bank")
    plain = breaks("betavae")  # a loss of a few elementwise ops: torch's own breaks
    assert with_loss == plain


def test_the_regime_warning_reaches_a_compiled_step(no_recompile):
    # sharp posteriors far apart: each query's own component carries its q(z) estimate
    loss_fn = tk.BetaTCVAELoss(dataset_size=10_000)
    fn = torch.compile(lambda z, mu, lv: loss_fn(z, mu, lv), fullgraph=True)
    mu = torch.randn(M, D) * 5
    lv = torch.full((M, D), -6.0)
    with pytest.warns(EstimatorRegimeWarning, match="self share") as rec:
        fn(mu + 0.01 * torch.randn(M, D), mu, lv)
    assert rec[0].filename == __file__  # it points at the user's call
    with warnings.catch_warnings():
        warnings.simplefilter("error", EstimatorRegimeWarning)
        for _ in range(3):  # once per loss object
            fn(mu + 0.01 * torch.randn(M, D), mu, lv)


def test_check_finite_raises_in_a_compiled_step(no_recompile):
    loss_fn = tk.BetaTCVAELoss(dataset_size=1000, check_finite=True, warn_regime=False, bank_size=32)
    fn = torch.compile(lambda z, mu, lv: loss_fn(z, mu, lv), fullgraph=True)
    z, mu, lv = torch.randn(M, D), torch.randn(M, D), torch.zeros(M, D)
    fn(z, mu, lv)
    bad = lv.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="logvar contains NaN or infinite values"):
        fn(z, mu, bad)
    assert int(loss_fn.bank.pushes) == 1  # nothing of the failed call was pushed


def _train(steps, state=None):
    """``steps`` Adam steps of a VAE with a warm-up of 6 calls and a bank of 64 (batch 16: full at the
    4th push); from ``state`` (a checkpoint of the state_dicts) if given."""
    torch.manual_seed(0)
    step = _Step("betatcvae-bank")
    step.loss_fn = tk.BetaTCVAELoss(dataset_size=1000, warmup_steps=6, bank_size=64, warn_regime=False)
    opt = torch.optim.Adam(step.params, lr=1e-2)
    modules = {"enc": step.enc, "dec": step.dec, "loss": step.loss_fn, "opt": opt}
    if state is not None:
        for k, m in modules.items():
            m.load_state_dict(state[k])
    data = _inputs(8)
    done = 0 if state is None else int(step.loss_fn.step)
    losses = []
    for x, eps in data[done:done + steps]:
        losses.append(step.forward_backward(x, eps))
        opt.step()
        opt.zero_grad()
    return losses, {k: m.state_dict() for k, m in modules.items()}


def test_a_resumed_run_continues_bitwise(tmp_path):
    """Mid-warm-up (3 of 6 calls) and mid-fill (48 of 64 rows): a checkpoint written with torch.save,
    loaded into fresh objects, continues exactly as the uninterrupted run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a fixed thread count: the CPU kernel's sums are bitwise for one count
    try:
        straight, end = _train(6)
        first, mid = _train(3)
    finally:
        torch.set_num_threads(threads)
    torch.save(mid, tmp_path / "ckpt.pt")
    assert int(mid["loss"]["step"]) == 3 and int(mid["loss"]["bank.filled"]) == 48
    torch.set_num_threads(1)
    try:
        rest, end2 = _train(3, torch.load(tmp_path / "ckpt.pt", weights_only=True))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(straight, first + rest):
        assert torch.equal(a, b)
    for k in ("enc", "dec", "loss"):
        for name, t in end[k].items():
            if isinstance(t, torch.Tensor):
                assert torch.equal(t, end2[k][name]), (k, name)


def test_import_loads_neither_dynamo_nor_triton():
    code = ("import sys, tcvae_kernels; "
            "print([m for m in ('torch._dynamo', 'triton', 'torch._inductor') if m in sys.modules])")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "[]"
