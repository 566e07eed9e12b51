"""Score-based and classical image priors (built in a later issue)."""
