"""The linearised network ``f(x; θ̂) + J(x)(θ − θ̂)``: its Jacobian rows and their closed forms.

The bottom layer of the core (it imports only ``labo.laplace.subsets``):

* ``jacobians``: outputs and Jacobians w.r.t. the selected weights (``torch.func``);
* ``masked_jacobians``: Jacobians w.r.t. individually selected weights of Linear layers;
* ``linear_factors``: Jacobian rows of whole Linear layers as per-layer factors ``b ⊗ ã``;
* ``layer_quads``: ``J S Jᵀ`` in closed form from those factors;
* ``rbf``: RBF features and the closed form of their covariance.

No re-exports: import from the modules (a package ``__init__`` that imports its modules
would put itself in the import graph of every sibling module).
"""
