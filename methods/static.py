"""Static sparse training: a fixed random mask, never updated; inference through CSR.

The baseline every dynamic sparse training paper reports ("Static" in
Evci et al. 2020, RigL, Sec. 4; Mocanu et al. 2018's fixed-probability
network): the layers get ERK densities (``distribution``) and a uniformly
random mask of that budget drawn once from the method's seeded generator,
the head included as in RigL's setup, and train with the mask fixed. It has
no schedule options: nothing changes during training.
"""

from __future__ import annotations

from dstbench.methods.mask_training import MaskedDST
from dstbench.methods.rigl import UnstructuredCSR
from dstbench.registry import register_method


@register_method("static")
class Static(UnstructuredCSR, MaskedDST):
    """A fixed random ERK mask trained without topology updates; inference format CSR."""

    display_name, color, marker, order = "Static (CSR)", "#D55E00", "P", 5
