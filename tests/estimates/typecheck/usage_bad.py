"""Misuse a type checker must reject: every line marked `# E: <code>` must get that error, and no
other line any (tests/estimates/test_typing.py)."""

import torch

import tcvae_kernels as tk

z = mu = lv = torch.zeros(4, 2)
d = tk.decompose(z, mu, lv, dataset_sise=100)  # E: call-arg
n: int = d.tc  # E: assignment
tk.log_qz(z, mu, lv, dataset_size=100, estimator=3)  # E: arg-type
tk.total_correlation(z, mu, lv, dataset_size="100")  # E: arg-type
tk.grouped_decompose(z, mu, lv, dataset_size=100)  # E: call-arg
loss = tk.BetaTCVAELoss(dataset_size=100, betta=2.0)  # E: call-arg
loss.options = loss.options.replace(estimator=3)  # E: arg-type
tk.HFVAELoss(dataset_size=100, groups=[1, 1], warmup=5)  # E: call-arg
tk.BetaTCVAELoss(100)  # E: call-arg
s: str = tk.self_share(z, mu, lv, dataset_size=100)  # E: assignment
tk.decompose(z, mu, lv, dataset_size=100, prior=3)  # E: arg-type
tk.log_qz(z, mu, lv, dataset_size=100, family=1)  # E: arg-type
tk.decompose(z, mu, lv, dataset_size=100, estimator="msss")  # E: arg-type
tk.BetaTCVAELoss(dataset_size=100, family="gauss")  # E: arg-type
tk.ComponentBank(16, family="gaussian")  # E: arg-type
tk.EstimatorOptions(dataset_size=100, estimator="foo")  # E: arg-type
tk.decompose(z, mu, lv, dataset_size=100, prior="flow")  # E: arg-type
tk.dataset_estimates.full_decomposition(mu, lv, family="gauss")  # E: arg-type
