"""What a fitted posterior predicts: GLM and sampling predictives, conditioning, function samples.

* ``glm``: the GLM predictive (mean and ``J H⁻¹ Jᵀ``), its variances, weight and
  function samples, class probabilities;
* ``jsjt``: how ``J S Jᵀ`` is computed (closed forms, Jacobians, or a ``vmap`` loop);
* ``conditioning``: exact conditioning on new observations (``WoodburyPrecision``);
* ``function_samples``: posterior function draws that can be evaluated anywhere.

Uses :mod:`labo.laplace.structures` and :mod:`labo.laplace.linearization`; no re-exports
(the public names are ``labo.laplace``'s).
"""
