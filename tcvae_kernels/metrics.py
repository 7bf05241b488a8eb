"""Disentanglement metrics: the standard six of Locatello et al. (2019) — β-VAE score, FactorVAE
score, MIG, DCI, SAP, Modularity/Explicitness — with disentanglement_lib 1.5's algorithms and
defaults (cross-checked against the real package in CI: ``tests/evaluation/test_dlib_crosscheck.py``), plus
Chen et al.'s sampling MIG. ``represent`` maps observations [n, ...] (numpy) to codes [n, D]
(numpy); ``data`` is a :class:`tcvae_kernels.data.GroundTruthData` (complete grids such as
``Shapes``, or :class:`~tcvae_kernels.data.ObservedData` for incomplete ones); ``rng`` is a
``np.random.Generator`` or a ``np.random.RandomState`` (with a RandomState every metric draws
exactly what disentanglement_lib draws from the same state). Codes sampled for a metric come in
batches of 16 (the library's ``batch_size``), factors uniform over the grid.

Names: ``<name>_score(represent, data, rng, ...)`` samples what it needs through ``represent``
and ``data`` as the library does; ``<name>_from_codes(...)`` scores given codes and factors (the
``_score`` form samples codes and calls it; β-VAE and FactorVAE sample observations with one
factor held fixed, so they have no codes-level form). :data:`METRICS` names each ``_score`` by its
name less ``_score``: the names :func:`evaluate` takes and returns. :func:`mig_from_posteriors` has
no ``_score`` form and is not in :data:`METRICS`: Chen et al.'s estimator reads the encoder
posteriors (mu, logvar) of data points with known factors, not codes from ``represent``.

* :func:`mig_from_posteriors` — Mutual Information Gap (Chen et al. 2018), the sampling estimator:
  ``I(z_d; v_k) = H(z_d) - H(z_d | v_k)`` from the encoder posteriors
  (:mod:`tcvae_kernels.dataset_estimates`), ``MIG = mean_k (I_(1)k - I_(2)k) / H(v_k)`` with
  I_(1), I_(2) the largest and second largest mutual information of factor k over the latent
  dims. ``average="chen2018_dsprites"``: the mean over every factor but shape (the first), as the
  paper's dSprites numbers.
* :func:`mig_histogram_score` — disentanglement_lib's MIG (``compute_mig``): 10,000 sampled codes,
  each dim discretised into 20 equal-width bins (edges in the codes' own dtype, as
  ``np.histogram``), discrete mutual information, the same gap (:func:`mig_histogram_from_codes`).
* :func:`factor_vae_score` — Kim & Mnih (2018): global variances of 10,000 codes; dims whose
  global *standard deviation* is below 0.05 are pruned; a vote is
  ``argmin_d var_batch(z_d) / var_global(z_d)`` over a batch of 64 observations sharing one fixed
  factor k, labelled k; the classifier maps each dim to its majority factor; score = accuracy on
  5,000 new votes (trained on 10,000).
* :func:`beta_vae_score` — Higgins et al. (2017): a point is the mean over 64 pairs of
  ``|z(x1) - z(x2)|`` where x1, x2 share factor k, labelled k; scikit-learn's ``LogisticRegression``
  (defaults) on 10,000 points; score = accuracy on 5,000 new points.
* :func:`dci_score` — Eastwood & Williams (2018): one ``GradientBoostingClassifier`` (defaults) per
  factor on 10,000 codes; importance R [D, K] = ``|feature_importances_|``;
  ``disentanglement = Σ_d ρ_d (1 - H_K(P_d·))`` with ``P_dk = R_dk / Σ_k R_dk``,
  ``ρ_d = Σ_k R_dk / Σ R``; ``completeness = Σ_k ρ_k (1 - H_D(P̃_·k))`` with
  ``P̃_dk = R_dk / Σ_d R_dk``, ``ρ_k = Σ_d R_dk / Σ R`` (entropies in base K and D, 1e-11 added);
  informativeness = the classifiers' mean accuracy on train and on 5,000 test codes.
* :func:`sap_score` — Kumar et al. (2018): score S [D, K] = test accuracy of a one-dimensional
  ``LinearSVC(C=0.01, class_weight="balanced")`` predicting factor k from code d (discrete
  factors, the library's default), or R² = cov(z_d, v_k)² / (var z_d · var v_k) for continuous
  ones; ``SAP = mean_k (S_(1)k - S_(2)k)``; 10,000 train / 5,000 test codes.
* :func:`modularity_explicitness_score` — Ridgeway & Mozer (2018): with m [D, K] the discrete mutual
  information of 20-bin codes and factors, ``modularity = mean_d 1 - (Σ_k m_dk² - max_k m_dk²) /
  (max_k m_dk² (K - 1))`` (0 where a dim carries none); explicitness = mean over factors of the
  one-vs-rest ROC-AUC of a ``LogisticRegression`` on standardised codes (train and test).

:func:`evaluate` runs any subset with these defaults and returns a dict and a markdown table.
The scikit-learn based metrics need ``pip install tcvae_kernels[metrics]``.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch

from . import dataset_estimates as _dataset
from ._docs import fill_doc
from .data import _integers
from .families import Family
from .progress import progress as _progress

#: Docstring paragraphs several functions share, written once: :func:`_doc` puts each in place of
#: its ``{name}`` (the Args lines of the sampling and of the codes-level metrics).
_SHARED_DOC = {
    "sampling": "represent, data, rng: the codes' source, the data set and the random stream (module docstring).",
    "codes": ("codes_train, codes_test: [N, D], float.\n"
              "        factors_train, factors_test: integer factor values [N, K]."),
}

#: The whole docstring of a ``<name>_score`` that samples train and test codes for its ``_from_codes``.
_TRAIN_TEST_DOC = """{title} of sampled codes, as disentanglement_lib's ``{library}``: :func:`{from_codes}` of
    ``num_train`` training and ``num_test`` test codes.

    Args:
        {sampling}
        num_train, num_test: codes sampled for each.
        batch_size: codes per call of ``represent``.
        {extra}: as in :func:`{from_codes}`.
        progress: a progress line over the batches.

    Returns:
        As :func:`{from_codes}`.
    """


#: fills the ``{sampling}`` and ``{codes}`` placeholders of a docstring (:data:`_SHARED_DOC`)
_doc = fill_doc(**_SHARED_DOC)


def _train_test_doc(title: str, library: str, from_codes: Callable, extra: str):
    """Writes the docstring of a ``<name>_score`` from :data:`_TRAIN_TEST_DOC`: ``title`` (what it
    scores), the library function it reproduces, its ``_from_codes`` and the keywords it passes on."""
    def fill(fn):
        fn.__doc__ = _TRAIN_TEST_DOC.format(title=title, library=library, from_codes=from_codes.__name__,
                                            extra=extra, sampling=_SHARED_DOC["sampling"])
        return fn
    return fill


def _gap(mi: np.ndarray, entropies: np.ndarray) -> np.ndarray:
    """mi [K, D] mutual information per (factor, latent) -> per-factor gaps [K]
    (I_(1)k - I_(2)k) / H(v_k). Factors that take a single value in the data (H(v_k) = 0) have no
    gap (NaN); :func:`_average` leaves them out."""
    top = np.sort(mi, axis=1)[:, ::-1]
    second = top[:, 1] if mi.shape[1] > 1 else np.zeros(mi.shape[0])
    varying = entropies > 1e-12
    gaps = np.full(mi.shape[0], np.nan)
    gaps[varying] = (top[varying, 0] - second[varying]) / entropies[varying]
    return gaps


_AVERAGES = ("all", "chen2018_dsprites")


def _average(gaps: np.ndarray, h_v: np.ndarray, average: str) -> float:
    """Mean of the per-factor gaps over the factors that vary; "chen2018_dsprites" leaves out
    factor 0 (shape), as Chen et al. (2018) do for dSprites (their compute_metric_shapes)."""
    if average not in _AVERAGES:
        raise ValueError(f"average must be one of {_AVERAGES}, got {average!r}")
    keep = h_v > 1e-12
    if average == "chen2018_dsprites":
        if len(gaps) != 5:
            raise ValueError(f"average='chen2018_dsprites' needs the 5 dSprites factors (shape first), got {len(gaps)}")
        keep[0] = False
    return float(gaps[keep].mean()) if keep.any() else 0.0


def mig_from_posteriors(mu, logvar, factors, factor_sizes, *, samples: int = 10000, generator=None,
                        backend: str = "auto", progress: bool = False, average: str = "all",
                        family: Family = "normal") -> dict:
    """Sampling MIG (Chen et al. 2018) from the encoder posteriors of data points with known factors.

    Args:
        mu, logvar: the posteriors [N, D] (tensors).
        factors: integer factor values [N, K], factor k in [0, factor_sizes[k]).
        factor_sizes: K values.
        samples: Monte Carlo samples per entropy (:mod:`tcvae_kernels.dataset_estimates`).
        generator: a CPU ``torch.Generator`` (None: the global RNG).
        backend: as for :func:`tcvae_kernels.log_qz`.
        progress: progress lines for the entropy estimates.
        average: "all" (every factor that varies) or "chen2018_dsprites" (every factor but the
            first, shape: Chen et al.'s dSprites MIG).
        family: the posterior family, "normal" or "laplace" (logvar then holds the log-scale).

    Returns:
        ``{"mig": float, "per_factor": [K], "mi": [K, D], "h_z": [D], "h_z_given_v": [K, D]}`` (nats).

    Raises:
        ValueError: factors not [N, K]; an unknown ``average``.
    """
    h_z = _dataset.marginal_entropies(mu, logvar, samples=samples, generator=generator, backend=backend,
                                      progress=progress, family=family).cpu()
    h_cond = _dataset.conditional_entropies(mu, logvar, factors, factor_sizes, samples=samples, generator=generator,
                                            backend=backend, progress=progress, family=family)
    mi = (h_z[None, :] - h_cond).clamp_min(0).numpy()
    h_v = _dataset.factor_entropies(factors, factor_sizes).numpy()
    gaps = _gap(mi, h_v)
    return {"mig": _average(gaps, h_v, average), "per_factor": gaps, "mi": mi, "h_z": h_z.numpy(),
            "h_z_given_v": h_cond.numpy()}


def _discrete_mi(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information (nats) of two integer label arrays; 0 exactly when either takes a single
    value, and never negative (scikit-learn's mutual_info_score conventions)."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    if ai.max() == 0 or bi.max() == 0:
        return 0.0
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1.0)
    joint /= joint.sum()
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return max(0.0, float((joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum()))


def _check_codes_factors(codes, factors, what="codes"):
    codes, factors = np.asarray(codes), np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2 or codes.shape[0] != factors.shape[0]:
        raise ValueError(f"{what} [N, D] and factors [N, K] expected, got {codes.shape} and {factors.shape}")
    if not np.issubdtype(factors.dtype, np.integer):
        raise TypeError(f"factors must be integer class indices, got {factors.dtype}")
    if not np.issubdtype(codes.dtype, np.floating):
        codes = codes.astype(np.float64)
    return codes, factors


def _histogram_discretize(codes: np.ndarray, bins: int) -> np.ndarray:
    """[N, D] -> bin labels [N, D]: equal-width bins between each dim's min and max, the edges in
    the codes' own dtype (``np.histogram``'s), labels 1..bins as disentanglement_lib's."""
    disc = np.zeros(codes.shape, dtype=np.int64)
    for d in range(codes.shape[1]):
        disc[:, d] = np.digitize(codes[:, d], np.histogram_bin_edges(codes[:, d], bins)[:-1])
    return disc


def _discrete_mi_matrix(disc: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """[D, K] discrete mutual information of binned codes and factors (nats)."""
    return np.array([[_discrete_mi(disc[:, d], factors[:, k]) for k in range(factors.shape[1])]
                     for d in range(disc.shape[1])])


def mig_histogram_from_codes(codes: np.ndarray, factors: np.ndarray, *, bins: int = 20, average: str = "all") -> dict:
    """disentanglement_lib's MIG from codes: each dimension binned into ``bins`` equal-width bins
    (edges in the codes' own dtype), discrete mutual information with each factor, the gap.

    Args:
        codes: [N, D], float.
        factors: integer factor values [N, K].
        bins: bins per code dimension.
        average: as in :func:`mig_from_posteriors`.

    Returns:
        ``{"mig": float, "per_factor": [K], "mi": [K, D]}`` (nats).
    """
    codes, factors = _check_codes_factors(codes, factors)
    mi = _discrete_mi_matrix(_histogram_discretize(codes, bins), factors).T
    h_v = np.array([_discrete_mi(factors[:, k], factors[:, k]) for k in range(factors.shape[1])])
    gaps = _gap(mi, h_v)
    return {"mig": _average(gaps, h_v, average), "per_factor": gaps, "mi": mi}


def _represent(represent, x) -> np.ndarray:
    z = np.asarray(represent(x))
    if z.ndim != 2 or z.shape[0] != len(x):
        raise ValueError(f"represent must map observations [n, ...] to codes [n, D], got {z.shape} for n = {len(x)}")
    return z if np.issubdtype(z.dtype, np.floating) else z.astype(np.float64)


@_doc
def factor_codes(represent: Callable, data, n: int, rng, *, batch_size: int = 16, progress: bool = False,
                 desc: str = "codes") -> tuple[np.ndarray, np.ndarray]:
    """Codes of observations with uniformly sampled factors, drawn in batches as
    disentanglement_lib's ``generate_batch_factor_code`` (the same stream).

    Args:
        {sampling}
        n: observations.
        batch_size: observations per call of ``represent``.
        progress, desc: a progress line over the batches, and its label.

    Returns:
        ``(codes [n, D], factors [n, K])``, numpy.
    """
    codes, factors = [], []
    bar = _progress(total=n, desc=desc, unit="code", enabled=progress)
    i = 0
    while i < n:
        m = min(n - i, batch_size)
        f, x = data.sample(m, rng)
        factors.append(f)
        codes.append(_represent(represent, x))
        i += m
        bar.update(m)
    bar.close()
    return np.concatenate(codes), np.concatenate(factors)


@_doc
def mig_histogram_score(represent: Callable, data, rng, *, num_train: int = 10000, bins: int = 20,
                        batch_size: int = 16, average: str = "all", progress: bool = False) -> dict:
    """disentanglement_lib's ``compute_mig``: :func:`mig_histogram_from_codes` of ``num_train`` sampled codes.

    Args:
        {sampling}
        num_train: codes sampled.
        bins, average: as in :func:`mig_histogram_from_codes`.
        batch_size: codes per call of ``represent``.
        progress: a progress line over the batches.

    Returns:
        As :func:`mig_histogram_from_codes`.
    """
    codes, factors = factor_codes(represent, data, num_train, rng, batch_size=batch_size, progress=progress,
                                  desc="MIG codes")
    return mig_histogram_from_codes(codes, factors, bins=bins, average=average)


@_doc
def factor_vae_score(represent: Callable, data, rng, *, batch_size: int = 64, num_train: int = 10000,
                     num_eval: int = 5000, num_variance_estimate: int = 10000, prune_threshold: float = 0.05,
                     progress: bool = False) -> dict:
    """FactorVAE score (Kim & Mnih 2018), as disentanglement_lib's ``compute_factor_vae``: dimensions
    whose global standard deviation is below ``prune_threshold`` are pruned; a vote is the argmin
    over the active dimensions of var_batch / var_global over ``batch_size`` observations sharing
    one factor, labelled with it; the majority-vote classifier's accuracy.

    Args:
        {sampling}
        batch_size: observations per vote.
        num_train, num_eval: votes to train and to evaluate the classifier on.
        num_variance_estimate: codes for the global variances.
        prune_threshold: the standard deviation below which a dimension is inactive.
        progress: a progress line over the votes.

    Returns:
        ``('train_accuracy', 'eval_accuracy', 'num_active_dims')`` (the library reports D as the
        last; here the number of unpruned dimensions).
    """
    _, x = data.sample(num_variance_estimate, rng)
    global_var = np.var(_represent(represent, x), axis=0, ddof=1)
    active = np.sqrt(global_var) >= prune_threshold
    if not active.any():  # a constant (or collapsed) representation: no vote can be cast
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}

    def votes(n, what):  # [K, D] counts of (fixed factor, argmin dim)
        out = np.zeros((data.num_factors, global_var.shape[0]), dtype=np.int64)
        for _ in _progress(range(n), desc=f"FactorVAE {what} votes", enabled=progress):
            k = int(_integers(rng, data.num_factors))
            f = data.sample_factors_with_fixed(batch_size, k, rng)
            local = np.var(_represent(represent, data.sample_observations_from_factors(f, rng)), axis=0, ddof=1)
            out[k, np.argmin(local[active] / global_var[active])] += 1  # index among the active dims
        return out

    train = votes(num_train, "train")
    classifier = np.argmax(train, axis=0)  # dim -> majority factor
    cols = np.arange(train.shape[1])
    ev = votes(num_eval, "eval")
    return {"train_accuracy": float(train[classifier, cols].sum() / train.sum()),
            "eval_accuracy": float(ev[classifier, cols].sum() / ev.sum()), "num_active_dims": int(active.sum())}


def _sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the [metrics] extra installs it
        raise ImportError("this metric needs scikit-learn: pip install 'tcvae_kernels[metrics]'") from exc
    from sklearn import ensemble, linear_model, metrics as skm, preprocessing, svm

    return ensemble, linear_model, skm, preprocessing, svm


def _single_threaded():
    """BLAS/OpenMP pools at one thread for the scikit-learn fits: their problems are small, and one
    pool per library competing for the cores is the oversubscription this guards against.
    threadpoolctl is a dependency of scikit-learn (every caller has passed :func:`_sklearn`)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


@_doc
def beta_vae_score(represent: Callable, data, rng, *, batch_size: int = 64, num_train: int = 10000,
                   num_eval: int = 5000, standardize: bool = False, progress: bool = False) -> dict:
    """β-VAE score (Higgins et al. 2017), as disentanglement_lib's ``compute_beta_vae_sklearn``: a
    point is the mean over ``batch_size`` pairs of ``|z(x1) - z(x2)|`` with x1, x2 sharing one
    factor, labelled with it; scikit-learn's ``LogisticRegression`` (defaults: L2, C = 1, lbfgs,
    100 iterations) on the raw features. Like the library's, the score depends on the codes' scale
    (features of small spread are regularised to chance).

    Args:
        {sampling}
        batch_size: pairs per point.
        num_train, num_eval: points to train and to evaluate on.
        standardize: scale the features by the training points' mean and standard deviation first
            (a scale-free variant; not the library's).
        progress: a progress line over the points.

    Returns:
        ``('train_accuracy', 'eval_accuracy', 'eval_accuracy_chance_corrected')``: chance is
        1/K, the corrected score (acc - chance) / (1 - chance) is 0 for a representation carrying
        no information.
    """
    _, linear_model, _, _, _ = _sklearn()

    def points(n, what):
        feats, labels = None, np.zeros(n, dtype=np.int64)
        for t in _progress(range(n), desc=f"β-VAE {what} points", enabled=progress):
            k = int(_integers(rng, data.num_factors))
            f1 = data.sample_factors(batch_size, rng)
            f2 = data.sample_factors_matching(f1, k, rng)
            z1 = _represent(represent, data.sample_observations_from_factors(f1, rng))
            z2 = _represent(represent, data.sample_observations_from_factors(f2, rng))
            if feats is None:
                feats = np.zeros((n, z1.shape[1]))
            feats[t], labels[t] = np.mean(np.abs(z1 - z2), axis=0), k
        return feats, labels

    xt, yt = points(num_train, "train")
    mean, std = (xt.mean(0), np.where(xt.std(0) > 0, xt.std(0), 1.0)) if standardize else (0.0, 1.0)
    xt = (xt - mean) / std
    with _single_threaded():
        model = linear_model.LogisticRegression().fit(xt, yt)
        train_acc = float(np.mean(model.predict(xt) == yt))
    xe, ye = points(num_eval, "eval")
    xe = (xe - mean) / std
    with _single_threaded():
        eval_acc = float(model.score(xe, ye))
    chance = 1.0 / data.num_factors
    return {"train_accuracy": train_acc, "eval_accuracy": eval_acc,
            "eval_accuracy_chance_corrected": (eval_acc - chance) / (1 - chance)}


def _need_two_values(factors: np.ndarray, metric: str):
    for k in range(factors.shape[1]):
        if len(np.unique(factors[:, k])) < 2:
            raise ValueError(f"{metric} cannot score factor {k}: it takes a single value in the sampled codes "
                             "(a classifier needs two classes); leave the factor out of the data")


def _train_test(represent, data, rng, num_train, num_test, batch_size, progress, metric):
    tr = factor_codes(represent, data, num_train, rng, batch_size=batch_size, progress=progress,
                      desc=f"{metric} train codes")
    te = factor_codes(represent, data, num_test, rng, batch_size=batch_size, progress=progress,
                      desc=f"{metric} test codes")
    _need_two_values(tr[1], metric)
    return tr, te


def _entropy_rows(p: np.ndarray, base: int) -> np.ndarray:
    """Entropy (base ``base``) of each row of the non-negative [R, C] ``p`` after normalising it
    (scipy.stats.entropy's definition)."""
    from scipy import stats

    return stats.entropy(p.T, base=base)


@_doc
def dci_from_codes(codes_train, factors_train, codes_test, factors_test, *, random_state=None) -> dict:
    """DCI (Eastwood & Williams 2018) from codes and factors (formulas in the module docstring).

    Args:
        {codes}
        random_state: the gradient-boosting trees' (None: numpy's global state, as the library).

    Returns:
        ``{"disentanglement", "completeness", "informativeness_train", "informativeness_test",
        "importance" [D, K]}``.

    Raises:
        ValueError: a factor with a single observed value (no classifier can be trained).
    """
    ensemble, _, _, _, _ = _sklearn()
    codes_train, factors_train = _check_codes_factors(codes_train, factors_train)
    codes_test, factors_test = _check_codes_factors(codes_test, factors_test)
    d, k = codes_train.shape[1], factors_train.shape[1]
    importance = np.zeros((d, k), dtype=np.float64)
    train_acc, test_acc = [], []
    with _single_threaded():
        for i in range(k):
            model = ensemble.GradientBoostingClassifier(random_state=random_state)
            model.fit(codes_train, factors_train[:, i])
            importance[:, i] = np.abs(model.feature_importances_)
            train_acc.append(np.mean(model.predict(codes_train) == factors_train[:, i]))
            test_acc.append(np.mean(model.predict(codes_test) == factors_test[:, i]))
    per_code = 1.0 - _entropy_rows(importance + 1e-11, base=k)  # [D]
    per_factor = 1.0 - _entropy_rows(importance.T + 1e-11, base=d)  # [K]
    weights = importance if importance.sum() != 0.0 else np.ones_like(importance)
    return {"disentanglement": float(np.sum(per_code * weights.sum(1) / weights.sum())),
            "completeness": float(np.sum(per_factor * weights.sum(0) / weights.sum())),
            "informativeness_train": float(np.mean(train_acc)), "informativeness_test": float(np.mean(test_acc)),
            "importance": importance}


@_train_test_doc("DCI", "compute_dci", dci_from_codes, "random_state")
def dci_score(represent: Callable, data, rng, *, num_train: int = 10000, num_test: int = 5000, batch_size: int = 16,
              random_state=None, progress: bool = False) -> dict:
    (ct, ft), (ce, fe) = _train_test(represent, data, rng, num_train, num_test, batch_size, progress, "DCI")
    return dci_from_codes(ct, ft, ce, fe, random_state=random_state)


@_doc
def sap_from_codes(codes_train, factors_train, codes_test, factors_test, *, continuous_factors: bool = False) -> dict:
    """SAP (Kumar et al. 2018) from codes and factors (formulas in the module docstring).

    Args:
        {codes}
        continuous_factors: score by R² instead of a classifier's accuracy.

    Returns:
        ``{"sap": float, "score_matrix": [D, K]}``.
    """
    _, _, _, _, svm = _sklearn()
    codes_train, factors_train = _check_codes_factors(codes_train, factors_train)
    codes_test, factors_test = _check_codes_factors(codes_test, factors_test)
    d, k = codes_train.shape[1], factors_train.shape[1]
    score = np.zeros((d, k))
    with _single_threaded():
        for i in range(d):
            for j in range(k):
                z, v = codes_train[:, i], factors_train[:, j]
                if continuous_factors:  # R² of a linear fit of factor j on code i
                    cov = np.cov(z, v, ddof=1)
                    score[i, j] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1]) if cov[0, 0] > 1e-12 else 0.0
                else:
                    clf = svm.LinearSVC(C=0.01, class_weight="balanced").fit(z[:, None], v)
                    score[i, j] = np.mean(clf.predict(codes_test[:, i][:, None]) == factors_test[:, j])
    top = np.sort(score, axis=0)
    gap = top[-1] - top[-2] if d > 1 else top[-1]
    return {"sap": float(np.mean(gap)), "score_matrix": score}


@_train_test_doc("SAP", "compute_sap", sap_from_codes, "continuous_factors")
def sap_score(represent: Callable, data, rng, *, num_train: int = 10000, num_test: int = 5000, batch_size: int = 16,
              continuous_factors: bool = False, progress: bool = False) -> dict:
    (ct, ft), (ce, fe) = _train_test(represent, data, rng, num_train, num_test, batch_size, progress, "SAP")
    return sap_from_codes(ct, ft, ce, fe, continuous_factors=continuous_factors)


@_doc
def modularity_explicitness_from_codes(codes_train, factors_train, codes_test, factors_test, *,
                                       bins: int = 20) -> dict:
    """Modularity and explicitness (Ridgeway & Mozer 2018) from codes and factors (formulas in the
    module docstring). Codes with zero spread are standardised by 1 instead of 0 (the library
    divides by zero there).

    Args:
        {codes}
        bins: bins per code dimension for the mutual information.

    Returns:
        ``{"modularity", "explicitness_train", "explicitness_test", "mi" [D, K]}``.
    """
    _, linear_model, skm, preprocessing, _ = _sklearn()
    codes_train, factors_train = _check_codes_factors(codes_train, factors_train)
    codes_test, factors_test = _check_codes_factors(codes_test, factors_test)
    mi = _discrete_mi_matrix(_histogram_discretize(codes_train, bins), factors_train)
    sq = np.square(mi)
    top = sq.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        modularity = 1.0 - (sq.sum(axis=1) - top) / (top * (sq.shape[1] - 1.0))
    modularity[top == 0.0] = 0.0
    mean, std = codes_train.mean(0), codes_train.std(0)
    std = np.where(std > 0, std, 1.0)
    xt, xe = (codes_train - mean) / std, (codes_test - mean) / std
    roc_train, roc_test = [], []
    with _single_threaded(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # lbfgs' ConvergenceWarning at 100 iterations
        for j in range(factors_train.shape[1]):
            yt, ye = factors_train[:, j], factors_test[:, j]
            clf = linear_model.LogisticRegression().fit(xt, yt)
            if not np.array_equal(np.unique(ye), clf.classes_):
                raise ValueError(f"explicitness needs every value of factor {j} in both the train and the test "
                                 f"codes (train {clf.classes_.tolist()}, test {np.unique(ye).tolist()}); "
                                 "use more codes")
            mlb = preprocessing.MultiLabelBinarizer()
            roc_train.append(skm.roc_auc_score(mlb.fit_transform(yt[:, None]), clf.predict_proba(xt)))
            roc_test.append(skm.roc_auc_score(mlb.fit_transform(ye[:, None]), clf.predict_proba(xe)))
    return {"modularity": float(np.mean(modularity)), "explicitness_train": float(np.mean(roc_train)),
            "explicitness_test": float(np.mean(roc_test)), "mi": mi}


@_train_test_doc("Modularity and explicitness", "compute_modularity_explicitness",
                 modularity_explicitness_from_codes, "bins")
def modularity_explicitness_score(represent: Callable, data, rng, *, num_train: int = 10000, num_test: int = 5000,
                                  batch_size: int = 16, bins: int = 20, progress: bool = False) -> dict:
    (ct, ft), (ce, fe) = _train_test(represent, data, rng, num_train, num_test, batch_size, progress, "Modularity")
    return modularity_explicitness_from_codes(ct, ft, ce, fe, bins=bins)


#: The metrics :func:`evaluate` runs: name -> (its ``_score`` function, the headline numbers of its
#: result). A name is its function's less ``_score`` (``dci_score`` -> "dci"), written nowhere else:
#: the names :func:`evaluate` takes (``metrics=``, ``options=``) and the keys of its result.
METRICS = {fn.__name__.removesuffix("_score"): (fn, headline) for fn, headline in (
    (beta_vae_score, ("eval_accuracy",)),
    (factor_vae_score, ("eval_accuracy",)),
    (mig_histogram_score, ("mig",)),
    (dci_score, ("disentanglement", "completeness", "informativeness_test")),
    (sap_score, ("sap",)),
    (modularity_explicitness_score, ("modularity", "explicitness_test")),
)}


class Evaluation(dict):
    """{metric name: its result dict}; ``.table`` is a markdown table of the headline numbers."""

    @property
    def table(self) -> str:
        lines = ["| metric | score | value |", "|---|---|---|"]
        for name, res in self.items():
            for key in METRICS[name][1]:
                lines.append(f"| {name} | {key} | {res[key]:.4f} |")
        return "\n".join(lines)


def evaluate(represent: Callable, data, metrics=tuple(METRICS), *, seed: int = 0, progress: bool = True,
             options: dict | None = None) -> Evaluation:
    """Run the named metrics with disentanglement_lib's defaults, each from a fresh
    ``np.random.RandomState(seed)`` (what the library's evaluation does with its ``random_seed``).

    Args:
        represent: observations [n, ...] (numpy) -> codes [n, D] (numpy).
        data: a :class:`~tcvae_kernels.data.GroundTruthData`; for a data set whose
            factor grid is incomplete wrap it in :class:`~tcvae_kernels.data.ObservedData`
            (sampling then draws observed combinations only).
        metrics: names from :data:`METRICS`.
        seed: the RandomState seed of every metric.
        progress: progress lines.
        options: ``{metric: {keyword: value}}`` overrides, e.g. ``{"dci": {"num_train": 2000}}``.

    Returns:
        An :class:`Evaluation`, ``{metric: its result dict}`` whose ``.table`` is a markdown table
        of the headline numbers.

    Raises:
        ValueError: an unknown metric name, options for a metric not run, or a factor with a
            single observed value for a classifier-based metric (naming it).
    """
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    options = dict(options or {})
    bad = [m for m in options if m not in names]
    if bad:
        raise ValueError(f"options given for metrics not run: {bad}")
    out = Evaluation()
    for name in _progress(names, desc="metrics", enabled=progress):
        fn = METRICS[name][0]
        out[name] = fn(represent, data, np.random.RandomState(seed), progress=progress, **options.get(name, {}))
    return out
