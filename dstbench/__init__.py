"""dstbench: a comparative benchmark suite for dynamic sparse training.

Subpackages: ``dstbench.methods`` (the SparsityMethod interface and its
implementations), ``dstbench.kernels`` (sparse formats and their compute
kernels), ``dstbench.suites`` (inference, training, accuracy).
"""

__version__ = "0.1.0"
