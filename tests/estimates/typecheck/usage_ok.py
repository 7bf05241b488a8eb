"""Public API as a type checker sees it: this file must type-check (tests/estimates/test_typing.py)."""

import torch

import tcvae_kernels as tk

z = mu = lv = torch.zeros(4, 2)
d: tk.Decomposition = tk.decompose(z, mu, lv, dataset_size=100, estimator="mss")
tc: torch.Tensor = d.tc
q = tk.log_qz(z, mu, lv, dataset_size=100, backend="cpu", check_finite=True)
t: torch.Tensor = tk.total_correlation(z, mu, lv, options=tk.EstimatorOptions(dataset_size=100))
g: tk.GroupedDecomposition = tk.grouped_decompose(z, mu, lv, groups=[[0], [1]], dataset_size=100)
s: torch.Tensor = tk.self_share(z, mu, lv, dataset_size=100, deterministic=True, process_group=None)
kwargs: tk.EstimatorKwargs = {"dataset_size": 100, "estimator": "mws"}
t2: torch.Tensor = tk.total_correlation(z, mu, lv, **kwargs)
loss = tk.BetaTCVAELoss(dataset_size=100, beta=6.0, warmup_steps=10)
estimator: str = loss.options.estimator
loss.options = loss.options.replace(estimator="mws", dataset_size=None)
hf = tk.HFVAELoss(dataset_size=100, groups=[1, 1], beta_within=2.0, check_finite=True)
hf_last: tk.HFVAETerms | None = hf.last
last = loss.last
if last is not None:
    share: torch.Tensor = last.self_share
    mi: torch.Tensor = last.mi
names: tuple[str, ...] = tk.backend_names()
lap: tk.Decomposition = tk.decompose(z, mu, lv, dataset_size=100, prior="laplace")
learned = tk.decompose(z, mu, lv, dataset_size=100, prior=torch.distributions.Laplace(0.0, 1.0))
tk.BetaTCVAELoss(dataset_size=100, prior=torch.distributions.Normal(0.0, 2.0))
laplace: tk.Decomposition = tk.decompose(z, mu, lv, dataset_size=100, family="laplace", prior="laplace")
tk.HFVAELoss(dataset_size=100, groups=[1, 1], family="laplace")
family: str = loss.options.family
bank = tk.ComponentBank(64)
banked: tk.Decomposition = tk.decompose(z, mu, lv, dataset_size=1000, bank=bank)
bank.push(mu, lv)
n_held: int = len(bank)
tk.BetaTCVAELoss(dataset_size=1000, bank_size=128, options=None)
held: tk.ComponentBank | None = tk.HFVAELoss(dataset_size=1000, groups=[1, 1], bank=bank).bank
