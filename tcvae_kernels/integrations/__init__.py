"""Adapters to the frameworks people already train VAEs with. Each submodule imports its framework
on first use (``tcvae_kernels.integrations.pythae`` needs ``pip install 'tcvae_kernels[pythae]'``)."""
