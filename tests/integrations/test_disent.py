"""The disent drop-in (tcvae_kernels.integrations.disent) against the real disent 0.9.3: disent's TC
is the MWS estimate less (D − 1)·log(N·M), exactly (values and gradients, float64); the framework's
TC term is the fused estimate with disent's weighting; it trains a few steps on disent's XYObject
data under a Lightning Trainer, reading N from the dataloader; disent's own framework checks
(training, checkpoint reload, pickling) pass on it as on the original; disent's whole regulariser is
BetaTCVAELoss(alpha=β, beta=2β−1, gamma=β, "mws") less its constant (the documented mapping).
disent needs Python >= 3.12: skipped elsewhere (make test-disent runs it in a Python 3.12 venv)."""

import math

import pytest
import torch

disent = pytest.importorskip("disent", reason="disent needs Python >= 3.12 (make test-disent)")

import tcvae_kernels as tk  # noqa: E402
from disent.frameworks.vae import BetaTcVae  # noqa: E402
from tcvae_kernels.integrations.disent import FusedBetaTcVae  # noqa: E402


@pytest.mark.parametrize("m,d", [(7, 3), (64, 10), (129, 1)])
def test_disent_s_tc_is_mws_less_its_constant(m, d):
    g = torch.Generator().manual_seed(m + d)
    z, mu = (torch.randn(m, d, dtype=torch.float64, generator=g) for _ in range(2))
    lv = (torch.rand(m, d, dtype=torch.float64, generator=g) - 1.0)
    n = 10 * m
    for t in (z, mu, lv):
        t.requires_grad_(True)
    theirs = BetaTcVae._betatc_compute_total_correlation(z, mu, lv)
    ours = tk.total_correlation(z, mu, lv, dataset_size=n, estimator="mws", backend="cpu")
    torch.testing.assert_close(ours - theirs, torch.tensor((d - 1) * math.log(n * m), dtype=torch.float64),
                               rtol=0, atol=1e-10)
    for a, b in zip(torch.autograd.grad(theirs, (z, mu, lv)), torch.autograd.grad(ours, (z, mu, lv))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _framework(**cfg):
    from disent.model import AutoEncoder
    from disent.model.ae import DecoderLinear, EncoderLinear

    model = AutoEncoder(encoder=EncoderLinear(x_shape=(3, 64, 64), z_size=4, z_multiplier=2),
                        decoder=DecoderLinear(x_shape=(3, 64, 64), z_size=4))
    return FusedBetaTcVae(model=model, cfg=FusedBetaTcVae.cfg(optimizer="adam", optimizer_kwargs=dict(lr=1e-3),
                                                              beta=4.0, **cfg))


@pytest.mark.parametrize("latents", ["normal", "laplace"])
def test_the_tc_term_is_the_fused_estimate_with_disent_s_weighting(latents):
    fw = _framework(dataset_size=5000, latent_distribution=latents)
    g = torch.Generator().manual_seed(3)
    loc, raw = torch.randn(32, 4, generator=g), torch.rand(32, 4, generator=g) + 0.5
    post = torch.distributions.Laplace(loc, raw) if latents == "laplace" else torch.distributions.Normal(loc, raw)
    z = post.rsample()
    reg, logs = fw._betatc_compute_loss(post, z)
    third = raw.log() if latents == "laplace" else (raw * raw).log()
    want = tk.total_correlation(z, loc, third, dataset_size=5000, family=latents)
    torch.testing.assert_close(logs["tc_loss"], want)
    torch.testing.assert_close(reg, (4.0 - 1.0) * want)


def test_no_dataset_size_is_a_clear_error():
    fw = _framework()
    post = torch.distributions.Normal(torch.zeros(8, 4), torch.ones(8, 4))
    with pytest.raises(ValueError, match="cfg.dataset_size=N"):
        fw._betatc_compute_loss(post, post.sample())


def test_it_trains_on_disent_data_reading_n_from_the_dataloader():
    import lightning as L
    from disent.dataset import DisentDataset
    from disent.dataset.data import XYObjectData
    from disent.dataset.transform import ToImgTensorF32
    from torch.utils.data import DataLoader

    data = XYObjectData()
    loader = DataLoader(DisentDataset(dataset=data, transform=ToImgTensorF32()), batch_size=32, shuffle=True)
    fw = _framework(loss_reduction="mean_sum")
    before = [p.detach().clone() for p in fw.parameters()]
    L.Trainer(logger=False, enable_checkpointing=False, max_steps=3, accelerator="cpu", enable_progress_bar=False,
              enable_model_summary=False).fit(fw, loader)
    assert fw._dataset_size() == len(data)
    assert any(not torch.equal(a, b) for a, b in zip(before, fw.parameters()))


def _disent_style(framework_cls, x_shape=None):
    """The set-up of disent's own framework tests (tests/test_frameworks.py in nmichlo/disent)."""
    from disent.dataset import DisentDataset
    from disent.dataset.data import XYObjectData
    from disent.dataset.sampling import GroundTruthSingleSampler
    from disent.dataset.transform import ToImgTensorF32
    from disent.model import AutoEncoder
    from disent.model.ae import DecoderLinear, EncoderLinear
    from torch.utils.data import DataLoader

    data = XYObjectData()
    loader = DataLoader(DisentDataset(data, GroundTruthSingleSampler(), transform=ToImgTensorF32()), batch_size=4,
                        shuffle=True, num_workers=0)
    shape = x_shape or data.x_shape
    fw = framework_cls(model=AutoEncoder(encoder=EncoderLinear(x_shape=shape, z_size=6, z_multiplier=2),
                                         decoder=DecoderLinear(x_shape=shape, z_size=6)), cfg=framework_cls.cfg())
    return fw, loader


@pytest.mark.parametrize("framework_cls", [BetaTcVae, FusedBetaTcVae], ids=["disent", "fused"])
def test_disent_s_framework_checks_pass(framework_cls, tmp_path):
    """disent's test_frameworks, test_framework_checkpointing and test_framework_pickling for its
    BetaTcVae, run on the original and on the drop-in alike."""
    import pickle

    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    fw, loader = _disent_style(framework_cls)
    pickle.dumps(fw)
    L.Trainer(logger=False, enable_checkpointing=False, max_steps=256, fast_dev_run=True,
              enable_progress_bar=False).fit(fw, loader)
    pickle.dumps(fw)
    fw, loader = _disent_style(framework_cls)
    trainer = L.Trainer(default_root_dir=tmp_path, enable_checkpointing=True, callbacks=[ModelCheckpoint(
        dirpath=tmp_path, save_last=True)], max_steps=2, fast_dev_run=False, enable_progress_bar=False)
    trainer.fit(fw, loader)
    checkpoints = list(tmp_path.glob("*.ckpt"))
    assert len(checkpoints) == 2
    for c in checkpoints:
        assert isinstance(framework_cls.load_from_checkpoint(c), framework_cls)
    pickle.dumps(_disent_style(framework_cls, x_shape=(64, 64, 3))[0])


def test_disent_s_whole_regulariser_in_the_paper_s_terms():
    """disent's BetaTcVae (sampled KL, summed over dims) = BetaTCVAELoss(alpha=β, beta=2β−1, gamma=β,
    estimator="mws") − (β − 1)(D − 1)·log(N·M): the documented mapping, in float64."""
    from disent.model import AutoEncoder
    from disent.model.ae import DecoderLinear, EncoderLinear

    b, m, d, n = 4.0, 48, 5, 3000
    fw = BetaTcVae(model=AutoEncoder(encoder=EncoderLinear(x_shape=(3, 8, 8), z_size=d, z_multiplier=2),
                                     decoder=DecoderLinear(x_shape=(3, 8, 8), z_size=d)),
                   cfg=BetaTcVae.cfg(beta=b, kl_loss_mode="approx", loss_reduction="mean_sum"))
    g = torch.Generator().manual_seed(5)
    loc, scale = torch.randn(m, d, dtype=torch.float64, generator=g), torch.rand(m, d, dtype=torch.float64, generator=g) + 0.3
    post, prior = torch.distributions.Normal(loc, scale), torch.distributions.Normal(torch.zeros_like(loc), torch.ones_like(scale))
    z = post.rsample()
    theirs, _ = fw.compute_ave_reg_loss([post], [prior], [z])
    ours = tk.BetaTCVAELoss(alpha=b, beta=2 * b - 1, gamma=b, estimator="mws", dataset_size=n, warn_regime=False)(
        z, loc, (scale * scale).log())
    torch.testing.assert_close(ours - (b - 1) * (d - 1) * math.log(n * m), theirs.to(torch.float64), rtol=1e-12, atol=1e-10)
