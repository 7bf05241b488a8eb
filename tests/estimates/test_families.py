"""The posterior family objects (tcvae_kernels.families) mirror csrc/tcvae_math.h's FamilyTraits,
and their densities and samplers are the ones the reference and the samplers use."""

import math
import re
from pathlib import Path

import pytest
import torch

from tcvae_kernels import families

MATH_H = Path(__file__).resolve().parents[2] / "csrc" / "tcvae_math.h"


def test_each_family_mirrors_its_family_traits():
    src = MATH_H.read_text()
    enum = dict(re.findall(r"(\w+) = (\d+)", re.search(r"enum class Family : int \{([^}]*)\}", src).group(1)))
    traits = {name.lower(): dict(re.findall(r"static constexpr double (k\w+) = ([\d.]+);", body))
              for name, body in re.findall(r"struct FamilyTraits<Family::(\w+)> \{(.*?)\n\};", src, re.S)}
    assert {n.lower(): int(i) for n, i in enum.items()} == {f.name: f.index for f in families.FAMILY_OBJECTS.values()}
    assert traits == {f.name: {"kSlope": str(f.slope), "kConst": str(f.const)}
                      for f in families.FAMILY_OBJECTS.values()}
    assert tuple(families.FAMILY_OBJECTS) == families.FAMILIES


@pytest.mark.parametrize("bad", ["gauss", None, 1])
def test_an_unknown_family_is_refused(bad):
    with pytest.raises(ValueError, match=r"family must be one of \('normal', 'laplace'\)"):
        families.get_family(bad)


@pytest.mark.parametrize("name", families.FAMILIES)
def test_samples_have_the_family_s_density(name):
    """z = mu + scale·noise: its mean and mean absolute deviation are those of the density."""
    fam = families.get_family(name)
    mu, p = torch.full((20000, 2), 0.5, dtype=torch.float64), torch.full((20000, 2), -0.3, dtype=torch.float64)
    z = fam.sample(mu, p, torch.Generator().manual_seed(0))
    scale = math.exp(-0.3) if name == "laplace" else math.exp(-0.15)
    mad = scale if name == "laplace" else scale * math.sqrt(2 / math.pi)  # E|z - mu|
    assert abs(z.mean().item() - 0.5) < 0.02 and abs((z - 0.5).abs().mean().item() - mad) / mad < 0.02
    grid = torch.linspace(-8, 9, 20001, dtype=torch.float64)
    dens = fam.log_density(grid, torch.tensor(0.5, dtype=torch.float64), torch.tensor(-0.3, dtype=torch.float64)).exp()
    # normalised, to the trapezoid rule's error: O(h²) for the normal, O(h·peak) ~ 1e-5 at the Laplace kink
    assert abs(torch.trapezoid(dens, grid).item() - 1.0) < 5e-5


@pytest.mark.parametrize("name", families.FAMILIES)
def test_abs_partials_are_the_density_s_gradients(name):
    fam = families.get_family(name)
    g = torch.Generator().manual_seed(1)
    z, mu, p = (torch.randn(50, dtype=torch.float64, generator=g) for _ in range(3))
    mu.requires_grad_(True)
    p.requires_grad_(True)
    d_mu, d_p = torch.autograd.grad(fam.log_density(z, mu, p).sum(), (mu, p))
    a_mu, a_p = fam.abs_partials((z - mu).detach(), torch.exp(-p).detach())
    torch.testing.assert_close(a_mu, d_mu.abs(), rtol=1e-14, atol=0)
    torch.testing.assert_close(a_p, d_p.abs(), rtol=1e-14, atol=1e-15)
