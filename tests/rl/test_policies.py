"""The rollout's fast sampling path agrees with torch.distributions; the model registry entry builds both kinds."""

import pytest
import torch

from fedloom.models import build_model
from fedloom.rl.policies import ActorCritic


@pytest.mark.parametrize("kind,n", [("categorical", 3), ("gaussian", 2)])
def test_fast_sample_log_prob_matches_the_distribution(kind, n):
    torch.manual_seed(0)
    net = ActorCritic(4, kind, n, (16,), log_std_init=-0.3)
    obs = torch.randn(500, 4)
    with torch.no_grad():
        a, logp, v = net.sample(obs)
        dist = net.distribution(obs)
        torch.testing.assert_close(logp, dist.log_prob(a))
        torch.testing.assert_close(v, net.value(obs))
    if kind == "categorical":
        assert a.dtype == torch.int64 and set(a.unique().tolist()) <= set(range(n))
    else:
        assert a.shape == (500, n)
        # the empirical standard deviation of a - mean is exp(log_std)
        assert (a - net.pi(obs)).std(0).detach() == pytest.approx(torch.full((n,), 0.3).neg().exp(), rel=0.1)


def test_registry_builds_categorical_and_gaussian_actor_critics():
    cat = build_model("actor_critic", {}, (4,), 2)
    gau = build_model("actor_critic", {"distribution": "gaussian", "hidden": [32]}, (3,), 1)
    assert isinstance(cat, ActorCritic) and cat.kind == "categorical" and not hasattr(cat, "log_std")
    assert gau.kind == "gaussian" and gau.log_std.shape == (1,)
    assert {n.split(".")[0] for n, _ in gau.named_parameters()} == {"pi", "v", "log_std"}
    assert len(list(gau.policy_parameters())) == 5 and len(list(gau.value_parameters())) == 4
    with pytest.raises(Exception, match="distribution"):
        build_model("actor_critic", {"distribution": "beta"}, (3,), 1)
