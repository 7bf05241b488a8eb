"""The pythae drop-in (tcvae_kernels.integrations.pythae) against the real pythae 0.1.2: the same
loss as pythae's BetaTCVAE for MWS (float64, 1e-10), for MSS exactly pythae's loss with the weight
matrix fixed, training through pythae's BaseTrainer, saving and reloading through AutoModel, and
the dataset_size fallback warning, the component bank (bank_size=)."""

import warnings

import pytest
import torch

pythae = pytest.importorskip("pythae")
from pythae.data.datasets import BaseDataset  # noqa: E402
from pythae.models import AutoModel, BetaTCVAE, BetaTCVAEConfig  # noqa: E402
from pythae.trainers import BaseTrainer, BaseTrainerConfig  # noqa: E402

from tcvae_kernels.estimators import log_weights, weight_matrix  # noqa: E402
from tcvae_kernels.integrations.pythae import FusedBetaTCVAE  # noqa: E402

from helpers import fresh_seed  # noqa: E402

TOL = 1e-10  # float64: both sides round ~B·D terms of size ~10 once


@pytest.fixture
def float64_default():
    """pythae builds its constants (log 2π, log(B·N)) with torch.tensor of Python numbers, i.e. in the
    default dtype: float64 here, so that its loss is a float64 computation throughout."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _models(use_mss, recon="mse", **cfg):
    config = BetaTCVAEConfig(input_dim=(1, 6, 6), latent_dim=5, use_mss=use_mss, reconstruction_loss=recon,
                             alpha=0.7, beta=6.0, gamma=1.3, **cfg)
    ref = BetaTCVAE(config).double()
    ours = FusedBetaTCVAE(config).double()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _batch(b=23, seed=None):
    g = torch.Generator().manual_seed(fresh_seed() if seed is None else seed)
    x = torch.rand(b, 1, 6, 6, generator=g, dtype=torch.float64)
    recon_x = torch.rand(b, 1, 6, 6, generator=g, dtype=torch.float64).clamp(0.01, 0.99)
    mu = torch.randn(b, 5, generator=g, dtype=torch.float64)
    log_var = torch.empty(b, 5, dtype=torch.float64).uniform_(-3.0, 0.5, generator=g)
    z = mu + torch.exp(0.5 * log_var) * torch.randn(b, 5, generator=g, dtype=torch.float64)
    return recon_x, x, mu, log_var, z


def _close(a, b):
    return all(abs(float(u) - float(v)) <= TOL * (1 + abs(float(v))) for u, v in zip(a, b))


@pytest.mark.parametrize("recon", ["mse", "bce"])
def test_mws_equals_pythaes_own_loss(recon, float64_default):
    ref, ours = _models(use_mss=False, recon=recon)
    args = _batch()
    want, got = ref.loss_function(*args, 5000), ours.loss_function(*args, 5000)
    assert _close(got, want), (got, want)


def test_mss_is_pythaes_loss_with_the_weight_matrix_fixed(monkeypatch, float64_default):
    ref, ours = _models(use_mss=True)
    args = _batch()
    b, n = args[0].shape[0], 5000
    pythae_as_shipped = ref.loss_function(*args, n)
    got = ours.loss_function(*args, n)
    # pythae's column-fill matrix differs from the stratified weights with the self weight on the diagonal
    fixed = weight_matrix(log_weights("mss", b, n), b, b, dtype=torch.float64)
    assert not torch.allclose(ref._log_importance_weight_matrix(b, n).double(), fixed)
    monkeypatch.setattr(ref, "_log_importance_weight_matrix", lambda batch_size, dataset_size: fixed)
    want = ref.loss_function(*args, n)
    assert _close(got, want), (got, want)
    assert abs(float(pythae_as_shipped[0]) - float(got[0])) > 1e-6  # the fix changes pythae's value


def test_gradients_match_pythae_with_the_fix(monkeypatch, float64_default):
    ref, ours = _models(use_mss=True)
    b, n = 17, 900
    fixed = weight_matrix(log_weights("mss", b, n), b, b, dtype=torch.float64)
    monkeypatch.setattr(ref, "_log_importance_weight_matrix", lambda batch_size, dataset_size: fixed)
    base = _batch(b)
    grads = []
    for model in (ref, ours):
        leaves = [t.clone().requires_grad_() for t in base[2:]]  # mu, log_var, z
        loss = model.loss_function(base[0], base[1], *leaves, n)[0]
        grads.append(torch.autograd.grad(loss, leaves))
    for g_ref, g_ours in zip(*grads):
        assert torch.allclose(g_ours, g_ref, atol=1e-10, rtol=1e-9)


def test_pythaes_trainer_trains_it(tmp_path):
    torch.manual_seed(0)
    config = BetaTCVAEConfig(input_dim=(1, 6, 6), latent_dim=4, use_mss=True, reconstruction_loss="bce")
    model = FusedBetaTCVAE(config)
    data = (torch.rand(96, 1, 6, 6) > 0.5).float()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = BaseTrainer(model=model, train_dataset=BaseDataset(data, torch.zeros(96)),
                          training_config=BaseTrainerConfig(output_dir=str(tmp_path), num_epochs=2,
                                                            per_device_train_batch_size=32, learning_rate=1e-3,
                                                            no_cuda=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the trainer passes dataset_size: no fallback warning
        trainer.train()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    out = model({"data": data[:32]}, dataset_size=96)
    assert torch.isfinite(out.loss)


def test_saves_and_reloads_through_automodel(tmp_path):
    config = BetaTCVAEConfig(input_dim=(1, 6, 6), latent_dim=4, use_mss=True)
    model = FusedBetaTCVAE(config)
    model.save(str(tmp_path))
    loaded = AutoModel.load_from_folder(str(tmp_path))
    assert isinstance(loaded, BetaTCVAE)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    again = FusedBetaTCVAE.from_pythae(loaded)
    direct = FusedBetaTCVAE.load_from_folder(str(tmp_path))
    x = torch.rand(8, 1, 6, 6)
    torch.manual_seed(1)
    want = model({"data": x}, dataset_size=100).loss
    for m in (again, direct):
        assert isinstance(m, FusedBetaTCVAE)
        torch.manual_seed(1)
        assert torch.equal(m({"data": x}, dataset_size=100).loss, want)


def test_warns_once_when_pythae_falls_back_to_the_batch_size():
    model = FusedBetaTCVAE(BetaTCVAEConfig(input_dim=(1, 6, 6), latent_dim=4, use_mss=True))
    x = torch.rand(16, 1, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        out = model({"data": x})  # no dataset_size: pythae uses x.shape[0]; quiet until trained on
    with pytest.warns(UserWarning, match="dataset_size == batch size"):
        out.loss.backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # once
        model({"data": x}).loss.backward()
        model({"data": x}, dataset_size=1000).loss.backward()
    fresh = FusedBetaTCVAE(BetaTCVAEConfig(input_dim=(1, 6, 6), latent_dim=4, use_mss=True))
    with torch.no_grad(), pytest.warns(UserWarning, match="dataset_size == batch size"):
        fresh({"data": x})  # without gradients: at once


def test_bank_is_read_then_pushed_in_training_only(float64_default):
    # bank_size: the loss is decompose(..., bank=model.bank) on the batch, then the batch is pushed;
    # eval mode and pythae's dataset_size fallback neither push nor (the fallback) read
    ref, _ = _models(use_mss=True)
    model = FusedBetaTCVAE(ref.model_config, bank_size=30).double()
    model.load_state_dict(ref.state_dict())
    first, second = _batch(b=12), _batch(b=12)
    model.loss_function(*first, dataset_size=500)
    assert len(model.bank) == 12 and model.bank.pushes == 1
    recon_x, x, mu, log_var, z = second
    want = FusedBetaTCVAE(ref.model_config).double()
    want.load_state_dict(ref.state_dict())
    from tcvae_kernels import decompose
    p = decompose(z, mu, log_var, dataset_size=500, bank=model.bank)
    p0 = decompose(z, mu, log_var, dataset_size=500)
    got = model.eval().loss_function(*second, dataset_size=500)
    assert model.bank.pushes == 1  # eval: read only
    rec = want._recon_loss(recon_x, x).mean()
    assert _close([got[0]], [rec + 0.7 * p.mi + 6.0 * p.tc + 1.3 * p.dim_kl])
    assert not _close([got[0]], [rec + 0.7 * p0.mi + 6.0 * p0.tc + 1.3 * p0.dim_kl])  # the bank counts
    with pytest.warns(UserWarning, match="dataset_size == batch size"):
        model.train().loss_function(*second, dataset_size=12)  # the fallback: a data set of one batch
    assert model.bank.pushes == 1
    with pytest.raises(ValueError, match="bank_size must be >= 0"):
        FusedBetaTCVAE(ref.model_config, bank_size=-1)
    assert FusedBetaTCVAE.from_pythae(ref, bank_size=7).bank.size == 7
