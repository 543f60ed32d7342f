"""The ``modeldepot`` command line: a thin layer over the SDK (tables, or ``--json`` for scripts)."""
