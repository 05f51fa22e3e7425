"""Comparing emotion representations across models (RQ2), with basis-free measures only:
coordinate i of one model means nothing in another.

Work in progress for issue 4: so far linear CKA with the unbiased HSIC estimator.
"""

from emocircuits.compare.cka import linear_cka, unbiased_hsic

__all__ = ["linear_cka", "unbiased_hsic"]
