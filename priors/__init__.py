"""Image priors: what an image is expected to look like, as a log-density and a sampler.

- ``sde.py`` (VP, sub-VP, VE diffusions), ``networks.py`` (the U-Net score model and closed-form scores),
  ``score_prior.py`` (:class:`ScorePrior`: log p by the exact probability-flow ODE, ``ode.py``, or the
  ELBO surrogate, ``elbo.py``; sampling; denoising), ``sampling.py`` (DDPM, DDIM, reverse-SDE and
  probability-flow samplers, Tweedie denoising);
- ``classical.py``: Gaussian, TV, MEM and L1 priors and the flux-normalised RML regularisers;
- ``factory.py``: which kind of prior a ``--prior`` name means, and the prior built from it;
- ``train.py`` and ``checkpoint.py``: denoising score matching and the prior file pairs it writes;
  ``pretrained.py``: the shipped priors by name; ``datasets/``: the generators of training sets;
- ``ood.py`` and ``score_error.py``: is an image in distribution, and how exact is a trained score.

Depends on :mod:`interfero` only; :mod:`posterior` builds on it.
"""
