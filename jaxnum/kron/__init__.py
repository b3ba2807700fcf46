"""The Kronecker-factored family without capture layers: Shampoo and SOAP, and their machinery.

Each is an optax ``GradientTransformation`` over any parameter pytree: a
parameter of rank >= 2 is preconditioned by left and right factor
statistics of its gradient, split into blocks when large; others fall back
to Adam. K-FAC and EKFAC, which need capture layers, are in ``jaxnum.kfac``.
"""

from jaxnum.kron.eigenbasis_adam import ScaleBySOAPState, scale_by_soap, soap
from jaxnum.kron.grafted_shampoo import ScaleByShampooState, scale_by_shampoo, shampoo

__all__ = [
    "ScaleBySOAPState",
    "ScaleByShampooState",
    "scale_by_shampoo",
    "scale_by_soap",
    "shampoo",
    "soap",
]
