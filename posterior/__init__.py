"""Posterior inference (DPI with normalizing flows), metrics, reports and the top-level command line.

The ``interfero`` command's entry point is :func:`posterior.cli.main`.
"""
