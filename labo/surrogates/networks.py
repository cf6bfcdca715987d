"""The networks of ``LaplaceModel``.

``default_network``: an MLP ``d -> 64 -> 64 -> m`` with tanh activations. Why: tanh
keeps the surrogate smooth, so acquisition gradients w.r.t. the inputs (which flow
through the network Jacobians) are well behaved, unlike ReLU's piecewise-linear
surface; two hidden layers of 64 units fit BO-sized data sets (tens to thousands
of points) without overfitting badly once the prior precision is tuned by the
marginal likelihood; and the first layer, the only one that grows with ``d``,
stays at ``64 d`` weights, so ``d = 1000`` gives about 68k weights, which the
default Kron posterior handles with 1000x1000 and 64x64 factors.

``rbf_network``: Gaussian radial-basis features ``exp(-||x - c_j||² / (2ℓ²))`` around
64 learnable centres, then ``64 -> 64 -> m`` with tanh (``LaplaceModel(network="rbf")``).
Its features vanish away from the centres, so the network's mean flattens and its
predictive variance settles away from the data, as a stationary GP's do; the MLP's
mean keeps rising towards the faces of the box, where qLogNEI's candidates then pile
up (``docs/research-log.md``, "What pushes the default model's candidates onto the
bounds"). By default only its two linear layers are Bayesian (``RBF_BAYESIAN_LAYERS``)
and the centres and the lengthscale are fitted by MAP training; with every weight
Bayesian under Kron the centres get a closed-form predictive (``labo.laplace.linearization.rbf``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from labo.exceptions import HyperparameterError, NetworkError
from labo.laplace.linearization.rbf import RBFFeatures

DEFAULT_WIDTH = 64
# Random Fourier features of rff_network.
RFF_FEATURES = 1024
# The modules of rbf_network whose weights LaplaceModel(network="rbf") makes Bayesian.
RBF_BAYESIAN_LAYERS = ("1", "3")


def default_network(
    d: int, m: int, width: int = DEFAULT_WIDTH, dtype: torch.dtype | None = None, device=None
) -> nn.Sequential:
    """MLP ``d -> width -> width -> m`` with tanh activations."""
    net = nn.Sequential(
        nn.Linear(d, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, m)
    )
    return net.to(dtype=dtype, device=device)


class SphereMap(nn.Module):
    """Inputs of the unit cube onto the unit sphere ``S^d`` (inverse stereographic projection).

    ``u = (2x − 1) · sqrt(3 / d)`` (centred at the box centre, scaled so that a uniform
    point has ``E‖u‖² = 1``), then ``z = (2u, 1 − ‖u‖²) / (1 + ‖u‖²)``, so ``‖z‖ = 1`` for
    every ``x``: a first layer's pre-activation no longer grows towards the corners,
    where ``‖x‖²`` is largest. Follows Doumont et al. 2025 ("We still don't understand
    high-dimensional Bayesian optimization"). Unlike a central projection
    ``(2x − 1, c) / ‖(2x − 1, c)‖``, which squeezes the box towards one pole, it keeps
    the angles between directions (conformal) and spreads the box over the sphere.
    Maps ``... x d`` to ``... x (d + 1)``; no parameters.
    """

    def __init__(self, d: int) -> None:
        super().__init__()
        self.d = d
        self.scale = (3.0 / d) ** 0.5

    def forward(self, x: Tensor) -> Tensor:
        u = (2 * x - 1) * self.scale
        sq = u.pow(2).sum(-1, keepdim=True)
        return torch.cat([2 * u, 1 - sq], -1) / (1 + sq)


# Stationary kernels the random Fourier features can approximate; ``nu`` of the Matérn ones.
RFF_KERNELS = {"rbf": None, "matern32": 1.5, "matern52": 2.5}


def stationary_kernel(kernel: str, sqdist: Tensor) -> Tensor:
    """``k(r)`` of a unit-variance stationary kernel from the squared scaled distances
    ``r² = ‖(x − x') / ℓ‖²``: ``"rbf"`` ``exp(−r² / 2)``, ``"matern32"``
    ``(1 + √3 r) exp(−√3 r)``, ``"matern52"`` ``(1 + √5 r + 5 r² / 3) exp(−√5 r)``.
    Differentiable at ``r = 0`` (the Matérn ones through ``r²``, clamped away from 0)."""
    if kernel not in RFF_KERNELS:
        raise NetworkError(f"kernel must be one of {tuple(RFF_KERNELS)}, got {kernel!r}.")
    if kernel == "rbf":
        return torch.exp(-0.5 * sqdist)
    r = sqdist.clamp_min(1e-30).sqrt()
    if kernel == "matern32":
        return (1 + 3**0.5 * r) * torch.exp(-(3**0.5) * r)
    return (1 + 5**0.5 * r + 5.0 / 3.0 * sqdist) * torch.exp(-(5**0.5) * r)


def squared_distances(U1: Tensor, U2: Tensor) -> Tensor:
    """``‖u − u'‖²`` between the rows of ``U1 (*b, n1, d)`` and ``U2 (*b, n2, d)`` (inputs
    already divided by their lengthscales), ``(*b, n1, n2)``, as ``‖u‖² + ‖u'‖² − 2 u·u'``
    clamped at 0: one matrix product, differentiable everywhere (no square root)."""
    sq1, sq2 = U1.pow(2).sum(-1), U2.pow(2).sum(-1)
    return (sq1.unsqueeze(-1) + sq2.unsqueeze(-2) - 2 * U1 @ U2.transpose(-1, -2)).clamp_min(0)


class RandomFourierFeatures(nn.Module):
    """Random Fourier features of a stationary kernel: ``φ(x)ᵀφ(x') ≈ k((x − x') / ℓ)``.

    ``kernel="rbf"`` (the default): ``k = exp(−‖(x − x')/ℓ‖² / 2)``, frequencies
    ``N(0, I)``. ``kernel="matern52"`` / ``"matern32"``: the Matérn kernel of smoothness
    ``ν = 5/2`` / ``3/2`` (:func:`stationary_kernel`), whose spectral density is the
    multivariate Student-t with ``2ν`` degrees of freedom, so each frequency row is
    ``N(0, I)`` times ``sqrt(2ν / u)`` with ``u ~ χ²(2ν)``. The Matérn kernels are rougher
    than the RBF (Matérn-3/2 sample paths are once, Matérn-5/2 twice differentiable), as
    Snoek et al. 2012 recommend for BO; SingleTaskGP uses Matérn-5/2.

    ``kind="cos"``: ``sqrt(2 / D) cos(Ω (x / ℓ) + b)`` with ``D`` frequencies and random
    phases ``b`` (Rahimi & Recht 2007). ``kind="sincos"``: ``sqrt(2 / D) [cos(Ω x / ℓ),
    sin(Ω x / ℓ)]`` with ``D / 2`` frequencies; then ``‖φ(x)‖² = 1`` exactly and
    ``φ(x)ᵀφ(x')`` depends on ``x − x'`` only, so a Bayesian linear layer on top has the
    same prior variance at every point of the box, as a stationary GP has, where the
    phase-shifted cosines leave an ``O(1 / √D)`` ripple in it (Sutherland & Schneider
    2015). ``orthogonal=True`` draws the frequencies in blocks of ``d`` orthogonal
    directions with chi-distributed norms (orthogonal random features, Yu et al. 2016),
    which approximates the kernel with a smaller error than i.i.d. normal rows.

    The frequencies (and phases) are fixed buffers drawn from a seeded generator; the ARD
    lengthscales ``ℓ`` (one per input, stored as their log) are the only parameters, so a
    Bayesian linear layer on top is a sparse-spectrum GP with fixed frequencies.
    Maps ``... x d`` to ``... x D``.
    """

    KINDS = ("cos", "sincos")

    def __init__(
        self,
        d: int,
        n_features: int,
        lengthscale: float,
        seed: int = 0,
        dtype=None,
        device=None,
        kind: str = "cos",
        orthogonal: bool = False,
        kernel: str = "rbf",
    ):
        super().__init__()
        if not (isinstance(n_features, int) and n_features > 0):
            raise NetworkError(f"n_features must be a positive integer, got {n_features!r}.")
        if not lengthscale > 0:
            raise HyperparameterError(f"lengthscale must be positive, got {lengthscale!r}.")
        if kind not in self.KINDS:
            raise NetworkError(f"kind must be one of {self.KINDS}, got {kind!r}.")
        if kind == "sincos" and n_features % 2:
            raise NetworkError(f"kind='sincos' needs an even n_features, got {n_features}.")
        if kernel not in RFF_KERNELS:
            raise NetworkError(f"kernel must be one of {tuple(RFF_KERNELS)}, got {kernel!r}.")
        self.kind = kind
        self.kernel = kernel
        g = torch.Generator().manual_seed(seed)
        kw = {"dtype": dtype or torch.get_default_dtype()}
        n_freq = n_features // 2 if kind == "sincos" else n_features
        if orthogonal:
            omega = _orthogonal_normal(n_freq, d, g, kw["dtype"])
        else:
            omega = torch.randn(n_freq, d, generator=g, **kw)
        if kind == "sincos":
            phase = torch.zeros(0, **kw)
        else:
            phase = 2 * torch.pi * torch.rand(n_freq, generator=g, **kw)
        nu = RFF_KERNELS[kernel]
        if nu is not None:  # Student-t rows: N(0, I) · sqrt(2ν / χ²(2ν)), drawn after the RBF's
            chi2 = torch.randn(n_freq, int(2 * nu), generator=g, **kw).pow(2).sum(-1, keepdim=True)
            omega = omega * (2 * nu / chi2).sqrt()
        self.register_buffer("omega", omega.to(device))
        self.register_buffer("phase", phase.to(device))
        self.log_lengthscale = nn.Parameter(torch.full((d,), float(lengthscale), **kw).log().to(device))

    @property
    def n_features(self) -> int:
        return 2 * self.omega.shape[0] if self.kind == "sincos" else self.omega.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        z = (x / self.log_lengthscale.exp()) @ self.omega.T
        scale = (2.0 / self.n_features) ** 0.5
        if self.kind == "sincos":
            return scale * torch.cat([torch.cos(z), torch.sin(z)], -1)
        return scale * torch.cos(z + self.phase)


def _orthogonal_normal(rows: int, d: int, g: torch.Generator, dtype) -> Tensor:
    """``rows x d`` frequencies: blocks of ``d`` orthonormal directions (QR of a Gaussian
    matrix), each row scaled by an independent chi(d) norm, so every row is marginally
    ``N(0, I)`` while the rows of a block are exactly orthogonal."""
    blocks = []
    for _ in range(-(-rows // d)):
        q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=dtype))
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # Haar-distributed
        norms = torch.randn(d, d, generator=g, dtype=dtype).norm(dim=1, keepdim=True)
        blocks.append(norms * q.T)
    return torch.cat(blocks)[:rows]


def dim_scaled_lengthscale_prior(d: int) -> tuple[float, float]:
    """``(loc, scale)`` of the LogNormal lengthscale prior of Hvarfner et al. 2024,
    ``LogNormal(√2 + log(d) / 2, √3)``, BoTorch's GP default since 0.12: lengthscales
    grow like ``√d``, which keeps a high-dimensional model from treating every
    unexplored point as unrelated to the data."""
    return 2**0.5 + 0.5 * math.log(d), 3**0.5


def rff_network(
    d: int,
    m: int,
    n_features: int = RFF_FEATURES,
    seed: int = 0,
    dtype=None,
    device=None,
    kind: str = "cos",
    orthogonal: bool = False,
    kernel: str = "rbf",
) -> nn.Sequential:
    """Random Fourier features (:class:`RandomFourierFeatures`) then ``D -> m`` linear.

    The lengthscales start at the mode of the dimension-scaled prior
    (:func:`dim_scaled_lengthscale_prior`), as BoTorch's GP does.
    """
    loc, scale = dim_scaled_lengthscale_prior(d)
    ls = math.exp(loc - scale**2)
    features = RandomFourierFeatures(d, n_features, ls, seed, dtype, device, kind, orthogonal, kernel)
    return nn.Sequential(features, nn.Linear(n_features, m)).to(dtype=dtype, device=device)


def is_rff_network(network) -> bool:
    """Whether ``network`` is ``nn.Sequential(RandomFourierFeatures, nn.Linear)`` (as built by
    :func:`rff_network`): ``LaplaceModel`` then fits it on the exact evidence."""
    return (
        isinstance(network, nn.Sequential)
        and len(network) == 2
        and isinstance(network[0], RandomFourierFeatures)
        and isinstance(network[1], nn.Linear)
    )


def rbf_centres(X: Tensor, n_centres: int) -> Tensor:
    """``n_centres`` rows of ``X`` drawn without replacement; when ``X`` has fewer rows,
    all of them plus uniform draws in the bounding box of ``X``."""
    n = X.shape[0]
    if n >= n_centres:
        return X[torch.randperm(n, device=X.device)[:n_centres]]
    lo, hi = X.min(0).values, X.max(0).values
    hi = torch.where(hi > lo, hi, lo + 1)
    extra = lo + (hi - lo) * torch.rand(n_centres - n, X.shape[1], dtype=X.dtype, device=X.device)
    return torch.cat([X, extra])


def rbf_network(
    X: Tensor, m: int, n_centres: int = DEFAULT_WIDTH, width: int = DEFAULT_WIDTH
) -> nn.Sequential:
    """RBF features around ``n_centres`` centres drawn from the (transformed) inputs
    ``X`` (``n x d``), then ``n_centres -> width -> m`` with tanh.

    The lengthscale starts at the median distance between the centres (``sqrt(d / 6)``,
    that of uniform points in the unit cube, when they coincide).
    """
    centres = rbf_centres(X, n_centres)
    dist = torch.cdist(centres, centres)
    off = dist[~torch.eye(n_centres, dtype=torch.bool, device=X.device)]
    off = off[off > 0]
    lengthscale = float(off.median()) if off.numel() else (X.shape[1] / 6) ** 0.5
    net = nn.Sequential(
        RBFFeatures(centres, lengthscale), nn.Linear(n_centres, width), nn.Tanh(), nn.Linear(width, m)
    )
    return net.to(dtype=X.dtype, device=X.device)
