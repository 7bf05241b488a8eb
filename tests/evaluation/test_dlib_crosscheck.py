"""Our metrics against the real disentanglement_lib 1.5 (installed without its dependencies; its
metric modules need gin-config 0.4.0, absl-py, six, numpy, scipy and scikit-learn; a stand-in module
registered as ``gin.tf`` keeps TensorFlow from ever being imported).

Both sides get the same data (a small complete factor grid whose ``sample_factors`` draws exactly
what the library's data sets draw: ``random_state.randint(size_k, size=n)`` per factor) and the same
random stream (a ``np.random.RandomState`` with one seed). The algorithms are the same, so every
sampled metric must agree exactly (``==`` on accuracies, which are counts over the same votes) and
every deterministic computation on the same codes to 1e-12 (float64 summation order); after a
metric both random states must have drawn the same numbers (their states compared)."""

import numpy as np
import pytest

from tcvae_kernels import data as tkdata
from tcvae_kernels import metrics

from dlib_side import (DlibData, beta_vae, bind_gin, dci, factor_vae, gin, mig, modularity_explicitness,
                       sap_score)

SIZES = (3, 4, 5, 6)
DATA = tkdata.FactorCodes(SIZES)
rng0 = np.random.default_rng(20261202)
MIX = rng0.normal(size=(4, 6))  # a fixed, partly entangled 6-d encoder of the 4 factors
SHIFT = rng0.normal(size=6)


def encoder(dtype, low_spread=False):
    """Codes [n, 6]: a linear mix of the factors bent by tanh; ``low_spread``: dim 5 scaled to a
    standard deviation of about 0.09 (variance 0.008 < 0.05 < std)."""

    def represent(x):
        z = np.tanh(x @ MIX + SHIFT) + 0.05 * np.sin(7.0 * x @ MIX)
        if low_spread:
            z[:, 5] *= 0.09 / SPREAD5
        return z.astype(dtype)

    return represent


GRID = DATA.sample_observations_from_factors(DATA.index_to_factors(np.arange(len(DATA))))
SPREAD5 = float(encoder(np.float64)(GRID)[:, 5].std())  # dim 5's standard deviation over the grid


@pytest.fixture(autouse=True)
def _gin():
    bind_gin()
    yield
    gin.clear_config()


def _same_stream(a, b):
    sa, sb = a.get_state(), b.get_state()
    return np.array_equal(sa[1], sb[1]) and sa[2] == sb[2]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_factor_vae_and_pruning_by_standard_deviation(dtype):
    rep = encoder(dtype, low_spread=True)
    kw = dict(batch_size=64, num_train=400, num_eval=200, num_variance_estimate=1000)
    ra, rb = np.random.RandomState(3), np.random.RandomState(3)
    ours = metrics.factor_vae_score(rep, DATA, ra, **kw)
    lib = factor_vae.compute_factor_vae(DlibData(DATA), rep, rb, None, **kw)
    assert ours["train_accuracy"] == lib["train_accuracy"] and ours["eval_accuracy"] == lib["eval_accuracy"]
    # stds over the grid: 0.081, 0.53, 0.62, 0.046, 0.54, 0.09: only dim 3 is below 0.05; a threshold
    # on the variance would also prune dims 0 and 5 (variances 0.0066 and 0.0081)
    assert ours["num_active_dims"] == 5
    assert _same_stream(ra, rb)


def test_beta_vae_score():
    rep = encoder(np.float64)
    kw = dict(batch_size=64, num_train=300, num_eval=150)
    ra, rb = np.random.RandomState(5), np.random.RandomState(5)
    ours = metrics.beta_vae_score(rep, DATA, ra, **kw)
    lib = beta_vae.compute_beta_vae_sklearn(DlibData(DATA), rep, rb, None, **kw)
    assert ours["train_accuracy"] == lib["train_accuracy"] and ours["eval_accuracy"] == lib["eval_accuracy"]
    assert _same_stream(ra, rb)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mig_histogram_in_the_codes_dtype(dtype):
    rep = encoder(dtype)
    ra, rb = np.random.RandomState(7), np.random.RandomState(7)
    ours = metrics.mig_histogram_score(rep, DATA, ra, num_train=2000)
    lib = mig.compute_mig(DlibData(DATA), rep, rb, None, num_train=2000, batch_size=16)
    assert abs(ours["mig"] - lib["discrete_mig"]) <= 1e-12
    assert _same_stream(ra, rb)


def test_mig_histogram_float32_codes_on_bin_edges():
    """float32 codes on the lattice j/200 (j = 0..20) sit on the 20-bin edges: binned in float64
    (a cast) they land one bin off, so this is where the dtype shows (here by 0.05)."""
    f = np.random.default_rng(1).integers(0, 21, size=(3000, 3))
    z = (f[:, [0, 1, 2, 0]] * 0.1 / 20).astype(np.float32)
    lib = mig._compute_mig(z.T, f.T)["discrete_mig"]
    assert abs(metrics.mig_histogram_from_codes(z, f)["mig"] - lib) <= 1e-12
    assert abs(metrics.mig_histogram_from_codes(z.astype(np.float64), f)["mig"] - lib) > 1e-2  # the cast would show


def test_dci():
    rep = encoder(np.float64)
    ra, rb = np.random.RandomState(11), np.random.RandomState(11)
    np.random.seed(0)  # both sides' boosted trees draw from numpy's global state (random_state=None)
    ours = metrics.dci_score(rep, DATA, ra, num_train=600, num_test=300)
    np.random.seed(0)
    lib = dci.compute_dci(DlibData(DATA), rep, rb, None, num_train=600, num_test=300, batch_size=16)
    for key in ("disentanglement", "completeness", "informativeness_train", "informativeness_test"):
        assert abs(ours[key] - lib[key]) <= 1e-12, key
    assert _same_stream(ra, rb)


@pytest.mark.parametrize("continuous", [False, True])
def test_sap(continuous):
    rep = encoder(np.float64)
    ra, rb = np.random.RandomState(13), np.random.RandomState(13)
    ours = metrics.sap_score(rep, DATA, ra, num_train=600, num_test=300, continuous_factors=continuous)
    lib = sap_score.compute_sap(DlibData(DATA), rep, rb, None, num_train=600, num_test=300, batch_size=16,
                                continuous_factors=continuous)
    assert abs(ours["sap"] - lib["SAP_score"]) <= 1e-12
    assert _same_stream(ra, rb)


def test_modularity_explicitness():
    rep = encoder(np.float64)
    ra, rb = np.random.RandomState(17), np.random.RandomState(17)
    ours = metrics.modularity_explicitness_score(rep, DATA, ra, num_train=800, num_test=400)
    lib = modularity_explicitness.compute_modularity_explicitness(DlibData(DATA), rep, rb, None, num_train=800,
                                                                   num_test=400, batch_size=16)
    assert abs(ours["modularity"] - lib["modularity_score"]) <= 1e-12
    assert abs(ours["explicitness_train"] - lib["explicitness_score_train"]) <= 1e-12
    assert abs(ours["explicitness_test"] - lib["explicitness_score_test"]) <= 1e-12
    assert _same_stream(ra, rb)
