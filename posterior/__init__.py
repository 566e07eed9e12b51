"""Posterior inference and the top-level command line (``posterior.cli``)."""
