"""The disentanglement_lib 1.5 side of the cross-check (tests/evaluation/test_dlib_crosscheck.py) and of
bench/bench_metrics.py: its metric modules imported without TensorFlow (a stand-in module
registered as ``gin.tf``; they need only gin-config 0.4.0, absl-py, six, numpy, scipy and
scikit-learn), the gin bindings of its default configs, and its data interface over one of our
factor grids, sampling as its data sets do."""

import logging
import sys
import types

import numpy as np

sys.modules.setdefault("gin.tf", types.ModuleType("gin.tf"))  # the stand-in: no TensorFlow
import gin  # noqa: E402  (requirements.txt installs it; the cross-check must run, never skip)

logging.getLogger().setLevel(logging.ERROR)  # gin 0.4's "blacklist is deprecated" warnings

from disentanglement_lib.evaluation.metrics import (  # noqa: E402,F401
    beta_vae, dci, factor_vae, mig, modularity_explicitness, sap_score, utils)


def bind_gin():
    """The bindings the library's metric configs make (unsupervised_study_v1: 20-bin histogram
    discretizer; factor_vae_metric.gin: dims pruned below a standard deviation of 0.05)."""
    gin.clear_config()
    gin.bind_parameter("discretizer.discretizer_fn", utils._histogram_discretize)
    gin.bind_parameter("discretizer.num_bins", 20)
    gin.bind_parameter("prune_dims.threshold", 0.05)


class DlibData:
    """disentanglement_lib's GroundTruthData interface over ``data`` (a complete factor grid of
    ours), sampling factors as the library's data sets: ``random_state.randint(size_k, size=n)``
    per factor, written here independently of our own ``sample_factors``."""

    def __init__(self, data):
        self.data = data
        self.num_factors = len(data.factor_sizes)
        self.factors_num_values = list(data.factor_sizes)
        self.observation_shape = [len(data.factor_sizes)]

    def sample_factors(self, num, random_state):
        factors = np.zeros((num, self.num_factors), dtype=np.int64)
        for pos, size in enumerate(self.factors_num_values):
            factors[:, pos] = random_state.randint(size, size=num)
        return factors

    def sample_observations_from_factors(self, factors, random_state):
        return self.data.sample_observations_from_factors(factors)

    def sample(self, num, random_state):
        factors = self.sample_factors(num, random_state)
        return factors, self.sample_observations_from_factors(factors, random_state)

    def sample_observations(self, num, random_state):
        return self.sample(num, random_state)[1]
