"""Curvature from the field's libraries: K-FAC from curvlinops, the exact GGN diagonal from BackPACK.

labo takes a curvature from a library where the library can serve the request and
is not slower than labo's own ``torch.func`` path (measured in
``benchmarks/core_timing.py --libraries``; numbers in ``docs/benchmarks.md``):

* K-FAC factors of convolutions (``nn.Conv1d``, ``nn.Conv2d``) come from curvlinops'
  :class:`~curvlinops.KFACLinearOperator` (type-2 Fisher, i.e. the exact GGN's loss
  Hessian; KFAC-expand, Grosse & Martens 2016). labo had no K-FAC for them: their
  weights fell into the diagonal "rest". When a ``Kron()`` posterior has a convolution
  among its blocks, curvlinops computes the factors of every block (its Linear factors
  equal labo's to round-off, tested). Networks of Linear layers only keep labo's
  factors (one forward and K backward passes, no per-example loop): curvlinops is
  1.1-4.5x slower there (level, within 10 %, for the rff network's last layer).
* The exact GGN diagonal of ``Diagonal()`` (and of Kron's diagonal rest) comes from
  BackPACK's ``DiagGGNExact`` when the selected weights are whole tensors of a flat
  ``nn.Sequential`` of modules BackPACK knows (:data:`BACKPACK_MODULES`) and labo's
  closed form for whole Linear layers does not apply (e.g. convolutions): one backward
  pass instead of per-row Jacobians, 3-9x faster on the CPU; on a GPU per-row Jacobians
  are faster below ``n x input entries = 5e6`` and keep those cases
  (:func:`backpack_preferred_for_rest`). For whole Linear layers labo's closed form is
  faster on the CPU up to ``n x widest input = 5e6`` and stays there; beyond (e.g.
  d = 1000, n >= 5000) BackPACK is about 20 % faster and serves
  (:data:`BACKPACK_LINEAR_MIN_ENTRIES`); on a GPU BackPACK serves from a widest input of
  1000 on (:data:`BACKPACK_LINEAR_MIN_WIDTH_CUDA`), where it is 1.4-5x faster. BackPACK
  extends modules in place (hooks that break ``torch.func``), so it works on a deep copy
  of the network.

Both are written in labo's conventions: regression curvature without the ``1/σ²``
factor (``MSELoss(reduction="sum")`` has Hessian ``2I``, so its factors are halved),
the K-FAC block of a layer is ``G ⊗ A`` on the row-major ``[W, b]`` with
``A = (1/N) Σ ã ãᵀ`` (for a convolution, ``ã`` is the patch of one output position
augmented by 1 and the mean runs over rows and positions) and ``G = Σ Bᵀ Λ B``.
For curvlinops, fixed per-observation noise variances (``noise_var``) scale the
outputs by ``noise_var^{-1/2}`` before the loss; BackPACK is not used with them. The
libraries are imported on first use: importing curvlinops costs about 1.5 s.
"""

from __future__ import annotations

import copy
import math
import warnings
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn.functional import unfold

from labo.laplace.linearization.jacobians import chunk_rows
from labo.laplace.subsets import ResolvedSubset

# Layers whose weights get Kronecker factors (Linear from labo or curvlinops, Conv from curvlinops).
KFAC_CONV = (nn.Conv1d, nn.Conv2d)

# Modules of an nn.Sequential through which BackPACK's DiagGGNExact backpropagates exactly.
BACKPACK_MODULES = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Flatten,
    nn.Identity,
    nn.ReLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.LogSigmoid,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.ZeroPad2d,
)


def is_kfac_conv(module: nn.Module) -> bool:
    """Whether curvlinops gives this convolution Kronecker factors (and labo its layout).

    Zero padding given as numbers, one channel group: curvlinops averages the patches
    of channel groups, which is not the GGN of a grouped convolution.
    """
    return (
        isinstance(module, KFAC_CONV)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def _conv1d_patches(x: Tensor, module: nn.Conv1d) -> Tensor:
    """Patches ``(batch, positions, in · kernel)`` of a Conv1d input ``(batch, in, length)``,
    in the order of ``weight.reshape(out, -1)`` (a Conv2d of height 1)."""
    cols = unfold(
        x.unsqueeze(-2),
        (1, module.kernel_size[0]),
        dilation=(1, module.dilation[0]),
        padding=(0, module.padding[0]),
        stride=(1, module.stride[0]),
    )
    return cols.transpose(1, 2)


def _kfac_operator_class():
    """curvlinops' KFACLinearOperator taught Conv1d: its patches are handed over as the
    ``(batch, positions, features)`` input of a weight-sharing Linear layer, its output
    gradients channel-last, which curvlinops then treats exactly like a Conv2d's."""
    from curvlinops import KFACLinearOperator

    class KFACWithConv1d(KFACLinearOperator):
        _SUPPORTED_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d)

        def _hook_accumulate_input_covariance(self, module, inputs, module_name):
            if isinstance(module, nn.Conv1d):
                inputs = (_conv1d_patches(inputs[0].data.detach(), module),)
            return super()._hook_accumulate_input_covariance(module, inputs, module_name)

        def _accumulate_gradient_covariance(self, grad_output, module, module_name):
            if isinstance(module, nn.Conv1d):
                grad_output = grad_output.transpose(1, 2)
            return super()._accumulate_gradient_covariance(grad_output, module, module_name)

    return KFACWithConv1d


class _RowScaled(nn.Module):
    """``f(x) · w`` per row: the GGN of ``Σ ‖f w‖²`` is the GGN with ``Λ_n = diag(w_n²)``."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.network(batch["x"]) * batch["w"]


def _rows_per_chunk(network: nn.Module, modules: list[nn.Module], X: Tensor, n_outputs: int) -> int:
    """Rows per chunk so that the layers' inputs and outputs (x K backward passes) stay bounded."""
    sizes = []
    hooks = [m.register_forward_hook(lambda mod, i, o: sizes.append(i[0][0].numel() + o[0].numel()))
             for m in modules]  # fmt: skip
    try:
        with torch.no_grad():
            network(X[:1])
    finally:
        for h in hooks:
            h.remove()
    return chunk_rows(X.shape[0], max(1, n_outputs * sum(sizes)))


def curvlinops_kfac_factors(
    network: nn.Module,
    layer_names: list[str],
    likelihood: str,
    X: Tensor,
    n_outputs: int,
    noise_var: Tensor | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """K-FAC factors ``(A, G)`` of the named Linear / Conv layers from curvlinops, labo's scaling.

    ``A`` is ``(in·kernel + 1)²`` with a bias (without: ``(in·kernel)²``), ``G`` is
    ``out x out``; the layer's GGN block is ``≈ G ⊗ A`` on its row-major ``[W, b]``.
    """
    operator = _kfac_operator_class()
    modules = dict(network.named_modules())
    layers = [modules[n] for n in layer_names]
    params = [p for m in layers for p in (m.weight, m.bias) if p is not None]
    N = X.shape[0]
    step = _rows_per_chunk(network, layers, X, n_outputs)
    one_class = likelihood == "classification" and n_outputs == 1
    if one_class:  # softmax over one class: zero loss Hessian (curvlinops' square root fails on it)
        likelihood, noise_var = "regression", None
    if likelihood == "classification":
        loss, model, prefix, halve = nn.CrossEntropyLoss(reduction="sum"), network, "", False
        target = torch.zeros(N, dtype=torch.long, device=X.device)  # type-2 ignores the labels
        data = [(X[s : s + step], target[s : s + step]) for s in range(0, N, step)]
    else:
        loss, halve = nn.MSELoss(reduction="sum"), True
        target = torch.zeros(N, n_outputs, dtype=X.dtype, device=X.device)
        if noise_var is None:
            model, prefix = network, ""
            data = [(X[s : s + step], target[s : s + step]) for s in range(0, N, step)]
        else:
            model, prefix = _RowScaled(network), "network."
            w = noise_var.rsqrt()
            data = [
                ({"x": X[s : s + step], "w": w[s : s + step]}, target[s : s + step])
                for s in range(0, N, step)
            ]
    # curvlinops differentiates w.r.t. the parameters: they must require grad for the pass.
    frozen = [p for p in params if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            op = operator(
                model,
                loss,
                params,
                data,
                fisher_type="type-2",
                kfac_approx="expand",
                separate_weight_and_bias=False,
                check_deterministic=False,
                num_data=N,
                num_per_example_loss_terms=1,
                batch_size_fn=partial(_batch_size, noise_var is not None),
            )
            op.compute_kronecker_factors()
    finally:
        for p in frozen:
            p.requires_grad_(False)
    out = []
    for name in layer_names:
        A = op._input_covariances[prefix + name].detach()
        G = op._gradient_covariances[prefix + name].detach()
        out.append((A, G.zero_() if one_class else G / 2 if halve else G))
    return out


def _batch_size(is_dict: bool, X) -> int:
    return X["x"].shape[0] if is_dict else X.shape[0]


# Rows x widest Linear input from which BackPACK's diagonal beats labo's closed form for whole
# Linear layers on the CPU (2-core machine, one thread: 18-23 % faster at d = 1000 for
# n = 5000 and 20000; 10-50 % slower at n x d <= 2e6; docs/benchmarks.md). On a GPU the same
# threshold decides for other whole tensors (convolutions): below it per-row Jacobians are
# faster there (H100: 1.3-5x at n x d <= 2e6, BackPACK 10-12 % faster at 5e6 and 2e7).
BACKPACK_LINEAR_MIN_ENTRIES = 5_000_000
# On a GPU, the widest Linear input from which BackPACK's diagonal beats labo's closed form
# (H100: 1.4-5.2x faster at d = 1000 for n = 1000-20000, 2.5-6x slower at d <= 100).
BACKPACK_LINEAR_MIN_WIDTH_CUDA = 1000


def backpack_preferred_for_linear(network: nn.Module, X: Tensor) -> bool:
    """Whether BackPACK, not labo's closed form, should give a whole-Linear-layer GGN diagonal."""
    widths = [m.in_features for m in network.modules() if isinstance(m, nn.Linear)]
    if not widths:
        return False
    if X.device.type == "cuda":
        return max(widths) >= BACKPACK_LINEAR_MIN_WIDTH_CUDA
    return X.shape[0] * max(widths) >= BACKPACK_LINEAR_MIN_ENTRIES


def backpack_preferred_for_rest(X: Tensor) -> bool:
    """Whether BackPACK, not per-row ``torch.func`` Jacobians, should give the GGN diagonal of
    whole tensors labo has no closed form for (convolutions): always on the CPU (3-9x
    faster), on a GPU from :data:`BACKPACK_LINEAR_MIN_ENTRIES` rows x input entries on."""
    if X.device.type != "cuda":
        return True
    return X.shape[0] * math.prod(X.shape[1:]) >= BACKPACK_LINEAR_MIN_ENTRIES


def backpack_plan(network: nn.Module, subset: ResolvedSubset, noise_var: Tensor | None = None) -> bool:
    """Whether BackPACK serves the GGN diagonal of this subset (see the module docstring).

    Needs whole selected tensors, no fixed per-row noise (a scaling between the network
    and the loss is not a module BackPACK backpropagates through) and a flat
    ``nn.Sequential`` whose modules from the first one with parameters on are all in
    :data:`BACKPACK_MODULES` (modules before it, e.g. an ``nn.Unflatten`` making channels,
    see no backward pass).
    """
    if noise_var is not None or not isinstance(network, nn.Sequential):
        return False
    if any(s.index is not None for s in subset.selected):
        return False
    children = list(network.children())
    first = next((i for i, m in enumerate(children) if any(True for _ in m.parameters())), None)
    if first is None:
        return False
    return all(isinstance(m, BACKPACK_MODULES) for m in children[first:])


def backpack_ggn_diagonal(
    network: nn.Module,
    subset: ResolvedSubset,
    likelihood: str,
    X: Tensor,
    n_outputs: int,
) -> Tensor:
    """The exact GGN diagonal ``(S,)`` of the selected whole tensors, from BackPACK's DiagGGNExact."""
    from backpack import backpack, extend
    from backpack.extensions import DiagGGNExact

    net = extend(copy.deepcopy(network))
    names = [n for n, _ in network.named_parameters()]
    for p in net.parameters():
        p.requires_grad_(True)
    params = dict(zip(names, net.parameters(), strict=True))
    if likelihood == "classification":
        loss, halve = extend(nn.CrossEntropyLoss(reduction="sum")), False
    else:
        loss, halve = extend(nn.MSELoss(reduction="sum")), True
    out = torch.zeros(subset.n_weights, dtype=X.dtype, device=X.device)
    step = _rows_per_chunk(net, list(net.children()), X, n_outputs)
    with torch.enable_grad():
        for start in range(0, X.shape[0], step):
            Xc = X[start : start + step]
            F = net(Xc)
            if likelihood == "classification":  # the exact GGN does not depend on the labels
                value = loss(F, torch.zeros(Xc.shape[0], dtype=torch.long, device=X.device))
            else:
                value = loss(F, torch.zeros_like(F))
            with backpack(DiagGGNExact()), warnings.catch_warnings():
                # the first layer's inputs need no gradient: torch notes that its hook still fires
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                value.backward()
            for s in subset.selected:
                d = params[s.name].diag_ggn_exact.detach().reshape(-1)
                out[s.offset : s.offset + s.size] += d / 2 if halve else d
            for p in net.parameters():
                p.grad = None
                del p.diag_ggn_exact
    return out
