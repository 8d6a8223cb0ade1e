"""Client learning-rate schedules (``client.lr_schedule`` in a run config).

A schedule maps the client's optimizer step t (1-based) to a multiplier of ``client.lr``. With
``client.local_steps = H`` every client runs H steps per round, so local step s (0-based) of round r is global
step t = (r - 1) * H + s + 1 and the learning rate changes *within* rounds; in epoch mode client step counts
differ, so t = r (constant within a round). Both engines apply the same per-step rates (``LocalSchedule.lr_steps``).

* ``noam`` -- Vaswani et al. 2017, section 5.3, eq. (3): d_model^-0.5 * min(t^-0.5, t * warmup^-1.5). With
  ``client.lr = 1`` this is the paper's lrate exactly; other values scale it.
* ``step`` -- multiply by ``decay`` after each milestone step.
* ``inverse`` -- Stich 2019's eta_t = a / (a + t - 1) (times client.lr).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fedloom.registry import LR_SCHEDULES


class _P(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoamParams(_P):
    d_model: int = Field(128, ge=1, description="model width in d_model^-0.5")
    warmup: int = Field(4000, ge=1, description="warmup steps (the paper: 4000)")


@LR_SCHEDULES.register("noam", NoamParams, "Vaswani et al. warmup: d^-0.5 min(t^-0.5, t warmup^-1.5)")
def noam(p: NoamParams):
    from fedloom.models.transformer import noam_lr

    return lambda t: noam_lr(t, p.d_model, p.warmup)


class StepParams(_P):
    milestones: list[int] = Field(default_factory=list, description="steps after which the lr is decayed")
    decay: float = Field(0.1, gt=0)


@LR_SCHEDULES.register("step", StepParams, "multiply by decay after each milestone step")
def step(p: StepParams):
    return lambda t: p.decay ** sum(t > m for m in p.milestones)


class InverseParams(_P):
    a: float = Field(100.0, gt=0)


@LR_SCHEDULES.register("inverse", InverseParams, "Stich 2019: a / (a + t - 1)")
def inverse(p: InverseParams):
    return lambda t: p.a / (p.a + t - 1)


def build_lr_schedule(name: str, params: dict | None):
    e = LR_SCHEDULES.entry(name)
    return e.factory(e.params(**(params or {})))
