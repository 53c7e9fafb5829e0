"""The benchmarks behind ``edgepareto bench``: search quality, scaling, the service, techniques."""
