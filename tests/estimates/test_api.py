"""Public API contract: argument validation, backend selection, decomposition and the loss module."""

import pytest
import torch

import tcvae_kernels as tk

from helpers import make_inputs, max_abs


def _inputs(m=6, k=6, d=3, dtype=torch.float64):
    return make_inputs(m, k, d, dtype=dtype)


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda z, mu, lv: (z.numpy(), mu, lv), TypeError, "z must be a torch.Tensor"),
        (lambda z, mu, lv: (z.long(), mu.long(), lv.long()), TypeError, "z must be a floating tensor"),
        (lambda z, mu, lv: (z, mu.float(), lv), TypeError, "share one dtype"),
        (lambda z, mu, lv: (z[None], mu, lv), ValueError, "z must be 2-D"),
        (lambda z, mu, lv: (z, mu[:, 0], lv), ValueError, "mu must be 2-D"),
        (lambda z, mu, lv: (z, mu, lv[:4]), ValueError, "same shape"),
        (lambda z, mu, lv: (z[:, :2], mu, lv), ValueError, "D=2 latent dimensions"),
        (lambda z, mu, lv: (z[:0], mu, lv), ValueError, "empty batch"),
        (lambda z, mu, lv: (z, mu.to("meta"), lv), ValueError, "one device"),
    ],
)
def test_bad_inputs_raise_clear_errors(mutate, exc, match):
    z, mu, lv = mutate(*_inputs())
    with pytest.raises(exc, match=match):
        tk.log_qz(z, mu, lv, dataset_size=100)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(dataset_size=5), ValueError, r"dataset_size \(N=5\) must be at least the batch size"),
        (dict(dataset_size=0), ValueError, "dataset_size must be >= 1"),
        (dict(dataset_size=-3), ValueError, "dataset_size must be >= 1"),
        (dict(dataset_size=10.0), TypeError, "dataset_size must be an int"),
        (dict(dataset_size=True), TypeError, "dataset_size must be an int"),
        (dict(), ValueError, "dataset_size is required"),
        (dict(dataset_size=100, estimator="MSS"), ValueError, "estimator must be one of"),
        (dict(dataset_size=100, backend="gpu"), ValueError, "backend must be 'auto' or one of"),
        (dict(dataset_size=100, backend=None), ValueError, "backend must be 'auto' or one of"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, exc, match):
    z, mu, lv = _inputs()
    with pytest.raises(exc, match=match):
        tk.log_qz(z, mu, lv, **kwargs)


def test_mss_needs_two_samples_and_mws_accepts_one():
    z, mu, lv = _inputs(1, 1, 3)
    with pytest.raises(ValueError, match="at least 2 components"):
        tk.log_qz(z, mu, lv, dataset_size=10, estimator="mss")
    out = tk.log_qz(z, mu, lv, dataset_size=10, estimator="mws")
    assert out.log_qz.shape == (1,) and out.log_qz_dims.shape == (1, 3)


def test_k_not_equal_m():
    z, mu, lv = _inputs(4, 9, 3)
    out = tk.log_qz(z, mu, lv, dataset_size=100)
    assert out.log_qz.shape == (4,) and out.log_qz_dims.shape == (4, 3)
    parts = tk.decompose(z, mu, lv, dataset_size=100)
    assert all(p.shape == () for p in parts)
    z, mu, lv = _inputs(9, 4, 3)
    with pytest.raises(ValueError, match=r"M <= K"):
        tk.log_qz(z, mu, lv, dataset_size=100, estimator="mss")
    with pytest.raises(ValueError, match=r"M <= K"):
        tk.decompose(z, mu, lv, dataset_size=100, estimator="mws")
    assert tk.log_qz(z, mu, lv, estimator="uniform").log_qz.shape == (9,)


def test_decompose_matches_its_definition():
    z, mu, lv = _inputs(8, 8, 4)
    out = tk.log_qz(z, mu, lv, dataset_size=200)
    parts = tk.decompose(z, mu, lv, dataset_size=200)
    own = -0.5 * ((z - mu) ** 2 * torch.exp(-lv) + lv + torch.log(torch.tensor(2 * torch.pi, dtype=z.dtype)))
    log_qz_x = own.sum(1)
    log_pz = (-0.5 * (z**2 + torch.log(torch.tensor(2 * torch.pi, dtype=z.dtype)))).sum(1)
    assert parts.mi.item() == pytest.approx((log_qz_x - out.log_qz).mean().item(), abs=1e-12)
    assert parts.tc.item() == pytest.approx((out.log_qz - out.log_qz_dims.sum(1)).mean().item(), abs=1e-12)
    assert parts.dim_kl.item() == pytest.approx((out.log_qz_dims.sum(1) - log_pz).mean().item(), abs=1e-12)
    tc = tk.total_correlation(z, mu, lv, dataset_size=200)
    assert tc.item() == pytest.approx(parts.tc.item(), abs=1e-12)
    # the three terms add up to the average KL(q(z|x) || p(z)) estimate E[log q(z|x) - log p(z)]
    assert (parts.mi + parts.tc + parts.dim_kl).item() == pytest.approx((log_qz_x - log_pz).mean().item(), abs=1e-10)


def test_backend_selection_and_errors():
    assert "torch" in tk.available_backends()
    assert set(tk.available_backends()) <= set(tk.backend_names())
    z, mu, lv = _inputs()
    ref = tk.log_qz(z, mu, lv, dataset_size=100, backend="torch")
    auto = tk.log_qz(z, mu, lv, dataset_size=100, backend="auto")
    assert max_abs(ref.log_qz, auto.log_qz) < 1e-10
    # an explicit backend that cannot run says why, per backend
    for name in tk.backend_names():
        from tcvae_kernels.dispatch import backend_reasons

        reasons = backend_reasons(name, z, mu, lv)
        if reasons:
            with pytest.raises(tk.BackendNotSupportedError, match=f"backend='{name}' cannot run") as info:
                tk.log_qz(z, mu, lv, dataset_size=100, backend=name)
            assert all(r in str(info.value) for r in reasons)


# ----------------------------------------------------------------------------- the loss module


def test_loss_module_weights_terms_and_exposes_last():
    z, mu, lv = (t.requires_grad_() for t in _inputs(10, 10, 4))
    fn = tk.BetaTCVAELoss(dataset_size=500, alpha=0.5, beta=6.0, gamma=2.0)
    loss = fn(z, mu, lv)
    parts = tk.decompose(z, mu, lv, dataset_size=500)
    assert loss.item() == pytest.approx((0.5 * parts.mi + 6 * parts.tc + 2 * parts.dim_kl).item(), abs=1e-10)
    assert fn.last.tc.item() == pytest.approx(parts.tc.item(), abs=1e-12)
    assert not fn.last.tc.requires_grad
    loss.backward()
    assert z.grad is not None and mu.grad is not None and lv.grad is not None


def test_loss_warmup_anneals_beta_gamma_and_survives_state_dict():
    z, mu, lv = _inputs(6, 6, 2)
    fn = tk.BetaTCVAELoss(dataset_size=100, beta=4.0, gamma=2.0, warmup_steps=4)
    assert fn.current_weights() == (1.0, 0.0, 0.0)
    for _ in range(2):
        fn(z, mu, lv)
    assert fn.current_weights() == (1.0, 2.0, 1.0)
    fn.eval()
    fn(z, mu, lv)  # evaluation calls do not advance the schedule
    assert fn.step == 2
    fresh = tk.BetaTCVAELoss(dataset_size=100, beta=4.0, gamma=2.0, warmup_steps=4)
    fresh.load_state_dict(fn.state_dict())
    assert fresh.step == 2
    fresh.train()
    for _ in range(5):
        fresh(z, mu, lv)
    assert fresh.current_weights() == (1.0, 4.0, 2.0)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(dataset_size=None), ValueError, "dataset_size is required"),
        (dict(dataset_size=100, beta="6"), TypeError, "beta must be a real number"),
        (dict(dataset_size=100, gamma=float("nan")), ValueError, "gamma must be finite"),
        (dict(dataset_size=100, warmup_steps=-1), ValueError, "warmup_steps must be >= 0"),
        (dict(dataset_size=100, estimator="x"), ValueError, "estimator must be one of"),
        (dict(dataset_size=100, backend="x"), ValueError, "backend must be"),
    ],
)
def test_loss_module_validates_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        tk.BetaTCVAELoss(**kwargs)


def test_backend_registry_derives_the_names_and_auto_order(monkeypatch):
    """Backends join by registering (name, per-device auto priority): BACKEND_NAMES, "auto"'s order
    and the accepted backend= values follow, with no list to edit; names cannot collide."""
    from tcvae_kernels import dispatch
    from tcvae_kernels.backends import base
    from tcvae_kernels.backends.torch_ref import TorchBackend

    assert tk.backend_names() == ("torch", "cpu", "cuda", "triton")
    assert (base.auto_order("cpu"), base.auto_order("cuda")) == (("cpu", "torch"), ("cuda", "triton", "torch"))
    monkeypatch.setattr(base, "_LOADERS", dict(base._LOADERS))
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    @base.register_backend
    class Doubled(TorchBackend):
        name = "doubled"
        auto_priority = {"cpu": 1000}
        calls = 0

        def log_qz(self, z, mu, logvar, weights, deterministic=False, family="normal"):
            type(self).calls += 1
            return super().log_qz(z, mu, logvar, weights, deterministic, family)

    assert tk.backend_names()[-1] == "doubled" and base.auto_order("cpu")[0] == "doubled"
    assert base.auto_order("cuda") == ("cuda", "triton", "torch")
    z = torch.randn(5, 3, dtype=torch.float64)
    assert dispatch.select_backend("auto", z, z, z).name == "doubled"
    got = tk.log_qz(z, z, z, dataset_size=50, backend="doubled")
    want = tk.log_qz(z, z, z, dataset_size=50, backend="torch")
    assert Doubled.calls == 1 and torch.equal(got.log_qz, want.log_qz)
    assert "doubled" in tk.backend_status()
    for bad in (Doubled, type("Auto", (TorchBackend,), {"name": "auto"}), type("Empty", (TorchBackend,), {"name": ""})):
        with pytest.raises(ValueError, match="backend name"):
            base.register_backend(bad)


def test_one_options_object_serves_every_entry_point():
    """Each entry point takes the EstimatorOptions fields as keywords or one options= object, with
    the same results; its signature and docstring list the fields; mixing both forms is refused."""
    import dataclasses
    import inspect

    z, mu, lv = _inputs(m=7, k=7, d=3)
    opts = tk.EstimatorOptions(dataset_size=50, estimator="mws", backend="torch")
    fields = [f.name for f in dataclasses.fields(tk.EstimatorOptions)]
    import typing

    calls = {tk.log_qz: {}, tk.decompose: {}, tk.total_correlation: {}, tk.self_share: {},
             tk.grouped_decompose: {"groups": [1, 2]}}
    for fn, own in calls.items():
        params = inspect.signature(fn).parameters
        hints = typing.get_type_hints(fn)
        assert "options" in params and hints["estimator_options"] == typing.Unpack[tk.EstimatorKwargs], fn.__name__
        assert all(f"{p}:" in fn.__doc__ for p in fields), fn.__name__
        with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['dataset_sise'\]"):
            fn(z, mu, lv, dataset_sise=50, **own)
        by_kw = fn(z, mu, lv, dataset_size=50, estimator="mws", backend="torch", **own)
        by_obj = fn(z, mu, lv, options=opts, **own)
        for a, b in zip(torch.utils._pytree.tree_leaves(by_kw), torch.utils._pytree.tree_leaves(by_obj)):
            assert torch.equal(a, b), fn.__name__
        with pytest.raises(TypeError, match="either options= or the keywords"):
            fn(z, mu, lv, options=opts, backend="cpu", **own)
    # a different option changes the result (the object is not ignored)
    other = tk.total_correlation(z, mu, lv, options=dataclasses.replace(opts, estimator="mss"))
    assert not torch.equal(other, tk.total_correlation(z, mu, lv, options=opts))
    with pytest.raises(TypeError, match="options must be a tcvae_kernels.EstimatorOptions"):
        tk.log_qz(z, mu, lv, options={"dataset_size": 50})


def test_loss_holds_its_options_and_validates_changes():
    loss = tk.BetaTCVAELoss(dataset_size=100, backend="torch")
    assert loss.options == tk.EstimatorOptions(dataset_size=100, backend="torch")
    loss.options = loss.options.replace(estimator="mws")  # a validated copy
    assert loss.options.estimator == "mws"
    with pytest.raises(ValueError, match="estimator must be one of"):
        loss.options = loss.options.replace(estimator="nope")
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        loss.options = loss.options.replace(backend="gpu")
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        loss.options.replace(betta=2.0)
    with pytest.raises(TypeError, match="options must be a tcvae_kernels.EstimatorOptions"):
        loss.options = {"estimator": "mss"}
    assert loss.options.estimator == "mws"  # a refused change leaves the options as they were
    with pytest.raises(TypeError, match="positional"):
        tk.BetaTCVAELoss(100)  # every argument is a keyword: no silent alpha=100


def test_options_are_keywords_only():
    """EstimatorOptions, like the losses, takes keywords only: field order is not part of the API."""
    with pytest.raises(TypeError):
        tk.EstimatorOptions(1000)  # type: ignore[misc]
    assert tk.EstimatorOptions(dataset_size=1000).dataset_size == 1000
