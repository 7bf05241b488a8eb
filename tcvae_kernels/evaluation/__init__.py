"""Evaluation beyond the minibatch: the built-in data (data.py), dataset-level estimates of MI / TC /
dim-KL with every posterior as a component (evaluate.py), and the disentanglement metrics of
disentanglement_lib 1.5 (metrics.py). Public as ``tk.data``, ``tk.evaluate``, ``tk.metrics``."""
