"""The ``dualwrite`` command: a thin click layer over the library."""
