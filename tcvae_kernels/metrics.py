"""Disentanglement metrics of the β-TCVAE literature, each with its formula and defaults.

* :func:`mig` — Mutual Information Gap (Chen et al. 2018), the sampling estimator:
  ``I(z_d; v_k) = H(z_d) - H(z_d | v_k)`` from the encoder posteriors (tcvae_kernels.evaluate),
  ``MIG = mean_k (I_(1)k - I_(2)k) / H(v_k)`` with I_(1), I_(2) the largest and second largest
  mutual information of factor k over the latent dims.
* :func:`mig_histogram` — the variant of disentanglement_lib: latent means discretised into 20
  equal-width bins per dim, discrete mutual information, same gap formula.
* :func:`factor_vae_score` — Kim & Mnih (2018): latents normalised by their global standard
  deviation (dims with global variance below 0.05 pruned); a vote is argmin_d of the variance
  of the normalised latents over a batch of 64 observations sharing one fixed factor k, labelled
  k; the classifier maps each dim to its majority factor; score = accuracy on 5,000 new votes
  (trained on 10,000).
* :func:`beta_vae_score` — Higgins et al. (2017): a point is the mean over 64 pairs of
  |z(x1) - z(x2)| where x1, x2 share factor k, labelled k; a linear (softmax) classifier is trained
  on 10,000 points; score = accuracy on 5,000 new points.

``represent`` maps observations [n, ...] (numpy) to codes [n, D] (numpy); ``data`` is a
:class:`tcvae_kernels.data.GroundTruthData`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from . import evaluate
from .progress import progress as _progress


def _gap(mi: np.ndarray, entropies: np.ndarray) -> tuple[float, np.ndarray]:
    """mi [K, D] mutual information per (factor, latent) -> (MIG, per-factor gaps). Factors that
    take a single value in the data (H(v_k) = 0) have no gap (NaN) and do not count."""
    top = np.sort(mi, axis=1)[:, ::-1]
    second = top[:, 1] if mi.shape[1] > 1 else np.zeros(mi.shape[0])
    varying = entropies > 1e-12
    gaps = np.full(mi.shape[0], np.nan)
    gaps[varying] = (top[varying, 0] - second[varying]) / entropies[varying]
    return (float(gaps[varying].mean()) if varying.any() else 0.0), gaps


def mig(mu, logvar, factors, factor_sizes, *, samples: int = 10000, generator=None, backend: str = "auto",
        progress: bool = False) -> dict:
    """Sampling MIG (Chen et al.) from the posteriors (mu, logvar) [N, D] of data points with
    integer ``factors`` [N, K]. Returns {"mig", "per_factor", "mi" [K, D], "h_z" [D], "h_z_given_v" [K, D]}.
    ``progress``: bars for the entropy estimates."""
    h_z = evaluate.marginal_entropies(mu, logvar, samples=samples, generator=generator, backend=backend,
                                      progress=progress).cpu()
    h_cond = evaluate.conditional_entropies(mu, logvar, factors, factor_sizes, samples=samples, generator=generator,
                                            backend=backend, progress=progress)
    mi = (h_z[None, :] - h_cond).clamp_min(0).numpy()
    h_v = evaluate.factor_entropies(factors, factor_sizes).numpy()
    score, gaps = _gap(mi, h_v)
    return {"mig": score, "per_factor": gaps, "mi": mi, "h_z": h_z.numpy(), "h_z_given_v": h_cond.numpy()}


def _discrete_mi(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information (nats) of two integer label arrays."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1.0)
    joint /= joint.sum()
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum())


def mig_histogram(codes: np.ndarray, factors: np.ndarray, *, bins: int = 20) -> dict:
    """disentanglement_lib's MIG: codes [N, D] discretised into ``bins`` equal-width bins per dim."""
    codes, factors = np.asarray(codes, dtype=np.float64), np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2 or codes.shape[0] != factors.shape[0]:
        raise ValueError(f"codes [N, D] and factors [N, K] expected, got {codes.shape} and {factors.shape}")
    disc = np.zeros(codes.shape, dtype=np.int64)
    for d in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, d], bins=bins)
        disc[:, d] = np.digitize(codes[:, d], edges[1:-1])
    mi = np.array([[_discrete_mi(disc[:, d], factors[:, k]) for d in range(codes.shape[1])]
                   for k in range(factors.shape[1])])
    h_v = np.array([_discrete_mi(factors[:, k], factors[:, k]) for k in range(factors.shape[1])])
    score, gaps = _gap(mi, h_v)
    return {"mig": score, "per_factor": gaps, "mi": mi}


def _represent_factors(represent, data, factors, rng):
    return np.asarray(represent(data.sample_observations_from_factors(factors, rng)), dtype=np.float64)


def factor_vae_score(represent: Callable, data, rng: np.random.Generator, *, batch_size: int = 64,
                     num_train: int = 10000, num_eval: int = 5000, num_variance_estimate: int = 10000,
                     prune_threshold: float = 0.05, progress: bool = False) -> dict:
    """FactorVAE score (Kim & Mnih). Returns {"train_accuracy", "eval_accuracy", "num_active_dims"}.
    ``progress``: a bar over the votes."""
    codes = _represent_factors(represent, data, data.sample_factors(num_variance_estimate, rng), rng)
    global_var = codes.var(axis=0, ddof=1)
    active = global_var >= prune_threshold
    if not active.any():  # a constant (or collapsed) representation: no vote can be cast
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    scale = np.sqrt(global_var)

    def votes(n, what):
        out = np.zeros((n, 2), dtype=np.int64)
        for t in _progress(range(n), desc=f"FactorVAE {what} votes", enabled=progress):
            k = rng.integers(data.num_factors)
            f = data.sample_factors(batch_size, rng)
            f[:, k] = f[0, k]  # the fixed factor
            z = _represent_factors(represent, data, f, rng) / scale
            var = z.var(axis=0, ddof=1)
            var[~active] = np.inf
            out[t] = (np.argmin(var), k)
        return out

    train = votes(num_train, "train")
    counts = np.zeros((codes.shape[1], data.num_factors), dtype=np.int64)
    np.add.at(counts, (train[:, 0], train[:, 1]), 1)
    classifier = counts.argmax(axis=1)  # dim -> majority factor
    train_acc = counts.max(axis=1).sum() / num_train
    ev = votes(num_eval, "eval")
    eval_acc = float(np.mean(classifier[ev[:, 0]] == ev[:, 1]))
    return {"train_accuracy": float(train_acc), "eval_accuracy": eval_acc, "num_active_dims": int(active.sum())}


def beta_vae_score(represent: Callable, data, rng: np.random.Generator, *, batch_size: int = 64,
                   num_train: int = 10000, num_eval: int = 5000, steps: int = 500) -> dict:
    """β-VAE score (Higgins et al.) with a softmax-regression classifier (Adam, full batch).

    Returns {"train_accuracy", "eval_accuracy", "eval_accuracy_chance_corrected"}; chance is
    1/num_factors (what a representation carrying no information reaches), the corrected score
    (acc - chance) / (1 - chance) is 0 for it."""

    def points(n):
        x = np.zeros((n, 0))
        feats, labels = [], np.zeros(n, dtype=np.int64)
        for t in range(n):
            k = rng.integers(data.num_factors)
            f1, f2 = data.sample_factors(batch_size, rng), data.sample_factors(batch_size, rng)
            f2[:, k] = f1[:, k]
            z1 = _represent_factors(represent, data, f1, rng)
            z2 = _represent_factors(represent, data, f2, rng)
            feats.append(np.abs(z1 - z2).mean(axis=0))
            labels[t] = k
        return (np.stack(feats) if feats else x), labels

    xt, yt = points(num_train)
    xe, ye = points(num_eval)
    mean, std = xt.mean(0), xt.std(0) + 1e-8
    xt_t = torch.tensor((xt - mean) / std, dtype=torch.float64)
    xe_t = torch.tensor((xe - mean) / std, dtype=torch.float64)
    yt_t = torch.tensor(yt)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    lin = torch.nn.Linear(xt.shape[1], data.num_factors).double()
    with torch.no_grad():
        lin.weight.copy_(0.01 * torch.randn(lin.weight.shape, generator=gen, dtype=torch.float64))
        lin.bias.zero_()
    opt = torch.optim.Adam(lin.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xt_t), yt_t)
        loss.backward()
        opt.step()
    with torch.no_grad():
        train_acc = (lin(xt_t).argmax(1) == yt_t).double().mean().item()
        eval_acc = (lin(xe_t).argmax(1) == torch.tensor(ye)).double().mean().item()
    chance = 1.0 / data.num_factors
    return {"train_accuracy": train_acc, "eval_accuracy": eval_acc,
            "eval_accuracy_chance_corrected": (eval_acc - chance) / (1 - chance)}
