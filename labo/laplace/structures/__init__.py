"""Posterior structures: the options, the curvature they store and the precisions they build.

* ``options``: ``Structure`` and the options ``Full()``, ``Diagonal()``, ``Kron()`` with their
  curvature modules;
* ``curvature`` / ``library_curvature``: the GGN and K-FAC of the data term (labo's own
  paths; curvlinops and BackPACK where they serve);
* ``protocol``: the ``Precision`` contract (and its optional layer-factor abilities);
* ``precisions``: ``FullPrecision``, ``DiagonalPrecision``, ``KronPrecision``;
* ``functional`` / ``functional_update``: the ``Functional()`` (GP view) structure and its
  block update on new rows.

Uses :mod:`labo.laplace.linearization`; no re-exports (the public names are
``labo.laplace``'s).
"""
