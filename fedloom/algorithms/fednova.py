"""FedNova (Wang, Liu, Liang, Joshi, Poor, "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization", NeurIPS 2020): normalized averaging.

With heterogeneous local work (client i runs tau_i local steps: different data sizes under a fixed number of
epochs), FedAvg's mean of the raw updates over-weights clients that took more steps and converges to a
mismatched objective. FedNova normalizes each update by its amount of local work before averaging (eq. 7):

    d_i = Delta_i / ||a_i||_1          Delta = tau_eff * sum_i p_i d_i,      tau_eff = sum_i p_i ||a_i||_1

with p_i = n_i / n (``weighting: samples``) or 1/m, and a_i the vector of step coefficients of client i's local
solver: ||a_i||_1 = tau_i for plain SGD, and for SGD with momentum rho (Appendix; heavy-ball form)
||a_i||_1 = [tau_i - rho (1 - rho^tau_i) / (1 - rho)] / (1 - rho). The server then applies Delta with the
configured server optimizer (W <- W + eta Delta). With equal tau_i it is exactly FedAvg.

tau_i is computed on the server from the client's (validated) sample count and the round's schedule -- the same
``LocalSchedule.num_steps`` the client ran -- so nothing extra travels and a client cannot inflate it. Assumes
a constant learning rate within a round (an lr schedule's per-step rates are not reweighted).
"""

from __future__ import annotations

from collections.abc import Sequence

from fedloom.core.aggregate import sample_weight
from fedloom.core.algorithm import AlgorithmParams, LocalSGDAlgorithm, Traits
from fedloom.core.types import Aggregate, ClientReport, LocalSchedule, ServerState
from fedloom.registry import ALGORITHMS


def step_norm(tau: int, momentum: float) -> float:
    """||a_i||_1 for ``tau`` local steps of SGD with heavy-ball momentum ``momentum`` (tau for plain SGD)."""
    if momentum == 0:
        return float(tau)
    r = momentum
    return (tau - r * (1 - r**tau) / (1 - r)) / (1 - r)


@ALGORITHMS.register("fednova", AlgorithmParams, "FedNova: updates normalized by local work before averaging")
class FedNova(LocalSGDAlgorithm):
    """Wang et al. 2020, eq. (7). Local SGD as in FedAvg; the server averages d_i = Delta_i / ||a_i||_1 and
    rescales by tau_eff."""

    traits = Traits(plain_mean=False, sgd_only="it normalizes each update by SGD's step coefficients ||a_i||_1 "
                                              "(momentum restarted each round)")

    def make_aggregator(self, ctx) -> NormalizedAverage:
        return NormalizedAverage(self, ctx.schedule)


class NormalizedAverage:
    """FedNova's server rule over the round's reports."""

    def __init__(self, algorithm: FedNova, base: LocalSchedule):
        self.algorithm, self.base = algorithm, base

    def aggregate(self, rnd: int, reports: Sequence[ClientReport], state: ServerState) -> Aggregate:
        sched = self.algorithm.local_schedule(self.base, rnd)
        work = [(r, step_norm(sched.num_steps(r.num_samples), sched.momentum)) for r in reports]
        work = [(r, a) for r, a in work if a > 0]  # a client without data took no step and moved nothing
        if not work:
            return Aggregate(None, reports)
        w = [sample_weight(r, self.algorithm.p.weighting) for r, _ in work]
        total = sum(w)
        p = [x / total for x in w]
        tau_eff = sum(pi * a for pi, (_, a) in zip(p, work))
        out = {k: v.new_zeros(v.shape) for k, v in work[0][0].update.items()}
        for pi, (r, a) in zip(p, work):
            for k, v in r.update.items():
                out[k].add_(v, alpha=tau_eff * pi / a)
        return Aggregate(out, reports, {"fednova_tau_eff": tau_eff})
