"""pythae drop-in: :class:`FusedBetaTCVAE`, pythae's ``BetaTCVAE`` with its loss computed by the
fused op (O(M·D) memory instead of pythae's [B, B, D] tensor).

    from pythae.models import BetaTCVAEConfig
    from tcvae_kernels.integrations.pythae import FusedBetaTCVAE

    model = FusedBetaTCVAE(BetaTCVAEConfig(input_dim=(1, 64, 64), latent_dim=10, beta=6.0, use_mss=True))
    # train with pythae's trainers or pipelines as usual; they pass dataset_size

Same constructor (plus ``backend=``, ``bank_size=`` and ``check_finite=``), same ``forward`` and outputs; ``loss_function(recon_x, x, mu,
log_var, z, dataset_size)`` returns pythae's ``(loss, recon_loss, reg_loss)``: batch means of

    recon + α·MI + β·TC + γ·dim-KL,   recon,   α·MI + β·TC + γ·dim-KL

with pythae's reconstruction terms (0.5·sum of squared errors for "mse", summed binary cross-entropy
for "bce") and MI, TC, dim-KL from :func:`tcvae_kernels.decompose`. ``use_mss=False`` is pythae's
minibatch weighted sampling (log weights −log(B·N)), identical to pythae's loss. ``use_mss=True``
is minibatch stratified sampling with the self weight on the diagonal, as the paper defines it:
pythae copies the authors' weight matrix, which puts it in a strided column (``W.view(-1)[::M+1]``
with M = B − 1), so its MSS estimate differs from this one by exactly that fix (tested).

pythae uses ``dataset_size = batch size`` when none is passed (any call outside its trainers);
both estimators then describe a data set the size of the batch, so the adapter warns once: when
such a loss is backpropagated, or at once if it is computed without gradients (pythae's trainers
pass dataset_size, apart from one forward they run as a sanity check, which stays quiet).
``bank_size=N`` (0: off): q(z) estimated from the batch's posteriors and the N most recent ones
before it (a :class:`~tcvae_kernels.ComponentBank`, ``model.bank``, pushed after each training-mode
loss; docs/estimators.md "A component bank"). The bank is not part of the saved model (pythae's
format holds the networks), so a reloaded model refills it in N / batch steps; it is neither read nor
pushed under pythae's dataset_size fallback (a data set of one batch has no other points).
Saved models reload with pythae's ``AutoModel`` (as pythae's ``BetaTCVAE``: same config and weights)
or with ``FusedBetaTCVAE.load_from_folder``; :meth:`FusedBetaTCVAE.from_pythae` converts a loaded one.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

try:
    from pythae.models import BetaTCVAE
except ImportError as e:  # pragma: no cover
    raise ImportError("tcvae_kernels.integrations.pythae needs pythae: pip install 'tcvae_kernels[pythae]' "
                      "(pythae==0.1.2)") from e

from .._validation import _check_int
from ..api import decompose
from ..backends.base import check_backend_name
from ..bank import ComponentBank

__all__ = ["FusedBetaTCVAE"]


class FusedBetaTCVAE(BetaTCVAE):
    """pythae's β-TCVAE whose loss is computed with the fused op (see the module docstring).

    Args: as ``pythae.models.BetaTCVAE`` (``model_config``, ``encoder``, ``decoder``), plus
    ``backend`` ("auto" or a name of ``tcvae_kernels.backend_names()``) and ``check_finite`` for
    :func:`tcvae_kernels.decompose` (and the bank's push), and ``bank_size`` (0: no component bank;
    else its size, ``model.bank``).

    Raises:
        ValueError: ``bank_size`` < 0. A bank with batch + bank_size > dataset_size raises at the loss.
    """

    def __init__(self, model_config, encoder=None, decoder=None, backend: str = "auto", bank_size: int = 0,
                 check_finite: bool = False):
        super().__init__(model_config, encoder=encoder, decoder=decoder)
        check_backend_name(backend)
        self.backend = backend
        self.check_finite = bool(check_finite)
        _check_int("bank_size", bank_size, minimum=0)
        # not a registered submodule: pythae's saved model holds the networks alone (its AutoModel
        # reloads the weights strictly), so the bank stays out of state_dict and follows the batch
        object.__setattr__(self, "bank", ComponentBank(bank_size) if bank_size else None)
        self._warned_dataset_size = False

    @classmethod
    def from_pythae(cls, model: BetaTCVAE, backend: str = "auto", bank_size: int = 0,
                    check_finite: bool = False) -> "FusedBetaTCVAE":
        """A FusedBetaTCVAE with the config, networks and weights of a pythae ``BetaTCVAE``."""
        out = cls(model.model_config, encoder=model.encoder if not model.model_config.uses_default_encoder else None,
                  decoder=model.decoder if not model.model_config.uses_default_decoder else None, backend=backend,
                  bank_size=bank_size, check_finite=check_finite)
        out.load_state_dict(model.state_dict())
        return out

    def _recon_loss(self, recon_x, x):
        """pythae's per-sample reconstruction term [B]."""
        flat_r, flat_x = recon_x.reshape(x.shape[0], -1), x.reshape(x.shape[0], -1)
        if self.model_config.reconstruction_loss == "mse":
            return 0.5 * F.mse_loss(flat_r, flat_x, reduction="none").sum(dim=-1)
        if self.model_config.reconstruction_loss == "bce":
            return F.binary_cross_entropy(flat_r, flat_x, reduction="none").sum(dim=-1)
        raise ValueError(f"reconstruction_loss must be 'mse' or 'bce', got {self.model_config.reconstruction_loss!r}")

    def loss_function(self, recon_x, x, mu, log_var, z, dataset_size):
        """(loss, recon_loss, reg_loss), batch means, as pythae's ``BetaTCVAE.loss_function``."""
        recon_loss = self._recon_loss(recon_x, x)
        bank = self.bank if int(dataset_size) != x.shape[0] else None  # not under pythae's fallback
        if bank is not None:
            bank.prepare(mu)  # the bank follows the batch, as a buffer would follow the model
        p = decompose(z, mu, log_var, dataset_size=int(dataset_size), estimator="mss" if self.use_mss else "mws",
                      backend=self.backend, check_finite=self.check_finite, bank=bank)
        if bank is not None and self.training:  # after the estimate: no component meets its own query twice
            bank.push(mu.detach(), log_var.detach(), check_finite=self.check_finite)
        reg = (self.alpha * p.mi + self.beta * p.tc + self.gamma * p.dim_kl).to(recon_loss.dtype)
        recon = recon_loss.mean(dim=0)
        loss = recon + reg
        if int(dataset_size) == x.shape[0] and not self._warned_dataset_size:
            # pythae's fallback. Its trainers pass dataset_size, but run one forward without it as a
            # sanity check: so warn when this loss is trained on (its backward), or at once without grad.
            if loss.requires_grad:
                loss.register_hook(lambda g: self._warn_dataset_size(x.shape[0]) or g)
            else:
                self._warn_dataset_size(x.shape[0])
        return loss, recon, reg

    def _warn_dataset_size(self, batch: int) -> None:
        if self._warned_dataset_size:
            return
        self._warned_dataset_size = True
        warnings.warn(
            f"FusedBetaTCVAE: dataset_size == batch size ({batch}): pythae falls back to the batch size when no "
            "dataset_size is given (calls outside its trainers), and the TC estimate then describes a data set of "
            "one batch. Pass model(inputs, dataset_size=len(train_dataset)).", UserWarning, stacklevel=2)
