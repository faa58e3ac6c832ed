"""Step schedules: RigL's update times and cosine drop fraction, DynaDiag's temperature.

``step`` always counts completed optimizer steps (1 after the first ``optimizer.step()``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class UpdateSchedule:
    """RigL / SRigL: update every ``delta_t`` steps while ``step < end_step``; cosine-decayed drop fraction.

    Attributes:
        delta_t: steps between updates.
        end_step: T_end in steps (``int(t_end * total_steps)``); no update at or after it.
        alpha: the initial drop fraction.
    """

    delta_t: int
    end_step: int
    alpha: float

    def is_update(self, step: int) -> bool:
        """True if the topology is updated after the ``step``-th optimizer step."""
        return step > 0 and step % self.delta_t == 0 and step < self.end_step

    def drop_fraction(self, step: int) -> float:
        """alpha_t = alpha * (1 + cos(pi * step / end_step)) / 2."""
        if self.end_step <= 0:
            return 0.0
        return self.alpha * (1.0 + math.cos(math.pi * min(step, self.end_step) / self.end_step)) / 2.0


def cosine_temperature(step: int, total_steps: int, t_max: float, t_min: float) -> float:
    """T = t_min + (t_max - t_min) * (1 + cos(pi * p)) / 2 with p = step / (total_steps - 1), clipped to [0, 1].

    T is t_max at step 0 and t_min at the last step, as in the DynaDiag authors' per-epoch schedule.
    """
    progress = min(1.0, max(0.0, step / max(1, total_steps - 1)))
    return t_min + 0.5 * (t_max - t_min) * (1.0 + math.cos(math.pi * progress))
