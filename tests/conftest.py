"""Test-session set-up. Without a CUDA device the Triton kernels are tested through Triton's
interpreter on CPU tensors; TRITON_INTERPRET must be set before triton is first imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
