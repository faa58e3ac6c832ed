"""Step schedules: RigL's update times and cosine drop fraction, DynaDiag's temperature.

``step`` always counts completed optimizer steps (1 after the first ``optimizer.step()``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class UpdateSchedule:
    """RigL / SRigL / SET: update every ``delta_t`` steps while ``step < end_step``, dropping a fraction of the weights.

    Attributes:
        delta_t: steps between updates.
        end_step: T_end in steps (``int(t_end * total_steps)``); no update at or after it.
        alpha: the initial drop fraction.
        cosine: decay the drop fraction to 0 at end_step on a cosine (RigL); False keeps alpha (SET's zeta).
    """

    delta_t: int
    end_step: int
    alpha: float
    cosine: bool = True

    def is_update(self, step: int) -> bool:
        """True if the topology is updated after the ``step``-th optimizer step."""
        return step > 0 and step % self.delta_t == 0 and step < self.end_step

    def drop_fraction(self, step: int) -> float:
        """alpha_t = alpha * (1 + cos(pi * step / end_step)) / 2 (alpha itself when not ``cosine``)."""
        if self.end_step <= 0:
            return 0.0
        if not self.cosine:
            return self.alpha
        return self.alpha * (1.0 + math.cos(math.pi * min(step, self.end_step) / self.end_step)) / 2.0


def cosine_temperature(step: int, end_step: int, t_max: float, t_min: float) -> float:
    """T = t_min + (t_max - t_min) * (1 + cos(pi * p)) / 2 with p = min(1, step / end_step).

    T is t_max at step 0, reaches t_min at ``end_step`` and stays there (t_min
    throughout if ``end_step`` <= 0). DynaDiag's authors (``mlp.py``) run this
    cosine per epoch over the epochs before the top-K freeze, so that T is
    t_min when the freeze happens.
    """
    if end_step <= 0:
        return t_min
    progress = min(1.0, max(0.0, step / end_step))
    return t_min + 0.5 * (t_max - t_min) * (1.0 + math.cos(math.pi * progress))
