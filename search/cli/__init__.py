"""The ``edgepareto`` command line, thin over the Python API."""
