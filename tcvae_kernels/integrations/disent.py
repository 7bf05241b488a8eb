"""disent drop-in: :class:`FusedBetaTcVae`, disent's ``BetaTcVae`` framework whose total
correlation is the fused minibatch estimator with its constants and a real dataset size.

    from disent.frameworks.vae import BetaTcVae
    from tcvae_kernels.integrations.disent import FusedBetaTcVae

    framework = FusedBetaTcVae(model=model, cfg=FusedBetaTcVae.cfg(beta=4, dataset_size=len(dataset)))
    # train with a Lightning Trainer as any disent framework

disent's ``BetaTcVae`` adds ``(β − 1)·TC`` to its β-VAE loss ``β·KL``, with the TC of the
minibatch weighted estimate (MWS) with every constant dropped: it equals
``tcvae_kernels.total_correlation(..., estimator="mws")`` minus ``(D − 1)·log(N·M)`` exactly, so its
gradients are those of MWS at any N, and its value is not a TC. This framework keeps disent's
weighting (``β·KL + (β − 1)·TC``, β scheduled by disent as usual: the config is read on every call)
and computes the TC with :func:`tcvae_kernels.total_correlation`: MSS (the default) or MWS with their
constants, N = ``cfg.dataset_size`` or, when that is None, the length of the training dataloader's
dataset when training runs under a Trainer; Laplace latents (``latent_distribution="laplace"``) use
``family="laplace"``. Written in the paper's terms (KL = MI + TC + dim-KL) the loss is
``β·MI + (2β − 1)·TC + β·dim-KL``: the paper's β-TCVAE with weights (α, β, γ) is ``BetaTCVAELoss``
(docs/getting-started.md, "With disent").
"""

from __future__ import annotations

import dataclasses

import torch
from torch.distributions import Distribution, Laplace

try:
    from disent.frameworks.vae import BetaTcVae
except ImportError as e:  # pragma: no cover
    raise ImportError("tcvae_kernels.integrations.disent needs disent (Python >= 3.12): "
                      "pip install 'tcvae_kernels[disent]'") from e

from ..api import total_correlation

__all__ = ["FusedBetaTcVae"]


class FusedBetaTcVae(BetaTcVae):
    """disent's β-TCVAE with the fused TC estimate (see the module docstring).

    Raises:
        ValueError: at the first loss, no dataset size (``cfg.dataset_size`` None and no Trainer's
            training dataloader with a sized dataset).
    """

    @dataclasses.dataclass
    class cfg(BetaTcVae.cfg):
        """disent's ``BetaTcVae.cfg`` plus the estimate's options.

        Attributes:
            dataset_size: N, the training set's size; None: read from the training dataloader.
            estimator: "mss" or "mws" (:func:`tcvae_kernels.total_correlation`).
            tc_backend: the backend of the estimate ("auto" or a name of ``tcvae_kernels.backend_names()``).
        """

        dataset_size: int | None = None
        estimator: str = "mss"
        tc_backend: str = "auto"

    def _dataset_size(self) -> int:
        n = self.cfg.dataset_size
        if n is not None:
            return int(n)
        trainer = getattr(self, "_trainer", None)
        loader = getattr(trainer, "train_dataloader", None) if trainer is not None else None
        dataset = getattr(loader, "dataset", None)
        try:
            return len(dataset)  # type: ignore[arg-type]
        except TypeError:
            raise ValueError("FusedBetaTcVae needs the training set's size N: set cfg.dataset_size=N, or train it "
                             "with a Lightning Trainer whose training dataloader has a dataset with len()") from None

    def _betatc_compute_loss(self, d_posterior: Distribution, z_sampled: torch.Tensor):
        laplace = isinstance(d_posterior, Laplace)
        third = torch.log(d_posterior.scale) if laplace else torch.log(d_posterior.variance)
        tc_loss = total_correlation(z_sampled, d_posterior.mean, third, dataset_size=self._dataset_size(),
                                    estimator=self.cfg.estimator, backend=self.cfg.tc_backend,
                                    family="laplace" if laplace else "normal")
        tc_reg_loss = (self.cfg.beta - 1.0) * tc_loss
        return tc_reg_loss, {"tc_loss": tc_loss, "tc_reg_loss": tc_reg_loss}
