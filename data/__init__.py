"""Files shipped with interfero (installed as the ``interfero_data`` package).

See ``data/README.md`` for what each file is and where its figures come from.
"""
