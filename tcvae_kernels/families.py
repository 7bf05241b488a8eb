"""The posterior families of the components, one object each (the option ``family=``).

The Python side of csrc/tcvae_math.h's ``FamilyTraits`` (one specialisation per family there, one
:class:`PosteriorFamily` here, with the same index and coefficients): its log density (the
reference's ``l``, written in :mod:`tcvae_kernels.reference`), its sampler, the kernels' id and
what the third argument holds. Adding a family is one object here, its ``FamilyTraits`` and its
Triton branch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, get_args

import torch

#: the family names (``family=``), as a type: mypy rejects a misspelled one
Family = Literal["normal", "laplace"]

LOG_2PI = math.log(2.0 * math.pi)
LOG_2 = math.log(2.0)


@dataclasses.dataclass(frozen=True)
class PosteriorFamily:
    """A diagonal posterior family with location ``mu`` and a log-parameter ``p`` (the third argument)."""

    #: the option value (``family=``)
    name: Family
    #: the kernels' id (csrc ``enum class Family``; the ops take ``name``)
    index: int
    #: what ``p`` holds
    parameter: str
    #: ``FamilyTraits::kSlope``: ``d x2/dz = -slope·slope(z - mu)·h2(p)`` of the base-2 log density
    #: ``x2 = c2(p) - pen(z - mu)·h2(p)``
    slope: float
    #: ``FamilyTraits::kConst``: ``d x2/dp = pen·h2 - const·log2 e``
    const: float

    def log_density(self, z: torch.Tensor, mu: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Elementwise ``l`` (broadcasting): normal ``-0.5·((z - mu)²·e^-p + p + log 2π)``, laplace
        ``-|z - mu|·e^-p - p - log 2``."""
        if self.name == "laplace":
            return -(z - mu).abs() * torch.exp(-p) - p - LOG_2
        return -0.5 * ((z - mu) ** 2 * torch.exp(-p) + p + LOG_2PI)

    def abs_partials(self, diff: torch.Tensor, inv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(|∂l/∂mu|, |∂l/∂p|)`` elementwise for ``diff = z - mu`` and ``inv = e^-p`` (broadcasting):
        normal ``(|diff·inv|, |0.5·diff²·inv - 0.5|)``, laplace ``(inv, ||diff|·inv - 1|)`` (the
        subgradient's magnitude at diff = 0 taken as inv). The tolerance rule's gradient mass."""
        if self.name == "laplace":
            return inv, (diff.abs() * inv - 1.0).abs()
        return (diff * inv).abs(), (0.5 * diff * diff * inv - 0.5).abs()

    def scale(self, p: torch.Tensor) -> torch.Tensor:
        """The scale of unit noise: ``e^{p/2}`` (σ, normal) or ``e^p`` (b's scale, laplace)."""
        return torch.exp(p) if self.name == "laplace" else torch.exp(0.5 * p)

    def noise(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
              dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Unit noise of the family on the CPU: N(0, 1), or Laplace(0, 1) as the difference of two
        Exp(1) (``log1p(-u2) - log1p(-u1)``, u uniform), from ``generator`` (None: the global RNG)."""
        if self.name == "laplace":
            u = torch.rand(2, *shape, generator=generator, dtype=dtype)
            return torch.log1p(-u[1]) - torch.log1p(-u[0])
        return torch.randn(*shape, generator=generator, dtype=dtype)

    def sample(self, mu: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``z = mu + scale(p)·noise`` [M, D], noise drawn on the CPU in mu's dtype, then moved to mu's device."""
        return mu + self.scale(p) * self.noise(tuple(mu.shape), generator, mu.dtype).to(mu.device)


NORMAL = PosteriorFamily("normal", 0, "the log-variance log σ²", slope=2.0, const=0.5)
LAPLACE = PosteriorFamily("laplace", 1, "the log-scale b = log(scale) (not a log-variance: the variance is 2·exp(2b))",
                          slope=1.0, const=1.0)
#: name -> family, in the order of ``Family`` (tests: the same names, indices and coefficients as FamilyTraits)
FAMILY_OBJECTS: dict[str, PosteriorFamily] = {f.name: f for f in (NORMAL, LAPLACE)}
FAMILIES: tuple[str, ...] = get_args(Family)


def get_family(name: str) -> PosteriorFamily:
    """The family named ``name``.

    Raises:
        ValueError: an unknown name (or one that is no string), listing the families."""
    fam = FAMILY_OBJECTS.get(name) if isinstance(name, str) else None
    if fam is None:
        raise ValueError(f"family must be one of {FAMILIES} (the posterior family of mu and the third argument: "
                         f"log-variance for 'normal', log-scale for 'laplace'), got {name!r}")
    return fam
