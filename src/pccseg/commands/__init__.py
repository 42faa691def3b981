"""Sub-commands of the ``pccseg`` CLI, one module each (see :mod:`pccseg.cli`)."""
