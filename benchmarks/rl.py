"""Reinforcement-learning benchmarks (issue 10): fedloom's PPO / TRPO against stable-baselines3, the PPO paper's
Table 1 question at small scale, and federated vs independent PPO on heterogeneous CartPoles.

    python benchmarks/rl.py cartpole   [--seeds 0 1 2] [--runs fedloom_ppo sb3_ppo fedloom_trpo sb3_trpo]
    python benchmarks/rl.py table1     [--env Acrobot-v1] [--steps 200000] [--seeds 0 1 2]
    python benchmarks/rl.py federated  [--seeds 0 1 2] [--rounds 30]
    python benchmarks/rl.py envs       # per-step cost: SyncVectorEnv vs gymnasium's batched CartPoleVectorEnv

Evaluation protocol (all runs, both libraries): every 5,000 environment steps, the policy acting at that step is
evaluated deterministically (argmax / Gaussian mean) for 10 episodes on a separate environment; a CartPole run
stops at the first evaluation with a mean return >= 475. Wall times are reported in total and without the time
spent evaluating (the libraries evaluate differently: fedloom runs the 10 episodes side by side in one vector
env, SB3's evaluate_policy on a 10-env DummyVecEnv). torch runs with one thread. stable-baselines3 and sb3-contrib are
benchmark-only dependencies (benchmarks/requirements-rl.txt); fedloom never imports them.

Results go to benchmarks/results/rl_<part>.json (one record per run, appended) and are summarised in
benchmarks/RESULTS-rl.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

import numpy as np
import torch

from fedloom.rl.envs import make_vector_env
from fedloom.rl.ppo import PPO, PPOConfig
from fedloom.rl.rollout import evaluate_policy
from fedloom.rl.trpo import TRPO, TRPOConfig

RESULTS = os.path.join(os.path.dirname(__file__), "results")
EVAL_EVERY, EVAL_EPISODES, TARGET = 5000, 10, 475.0

# rl-baselines3-zoo's tuned CartPole-v1 settings (hyperparams/ppo.yml, hyperparams/trpo.yml), used by both libraries.
ZOO_PPO_CARTPOLE = {"n_envs": 8, "n_steps": 32, "batch_size": 256, "gae_lambda": 0.8, "gamma": 0.98, "n_epochs": 20,
                        "ent_coef": 0.0, "lr": 1e-3, "anneal_lr": True, "clip_eps": 0.2, "anneal_clip": True}  # lin_0.001, lin_0.2
ZOO_TRPO_CARTPOLE = {"n_envs": 2, "n_steps": 512, "cg_damping": 1e-3, "gae_lambda": 0.98, "gamma": 0.99, "vf_lr": 1e-3,
                         "vf_iters": 20, "vf_batch_size": 512, "backtrack_coeff": 0.8}  # sb3-contrib line search shrink 0.8
MAX_STEPS = 100_000  # the zoo's n_timesteps (learning-rate and clip annealing run over this horizon)


def load() -> float:
    return os.getloadavg()[0]


def machine() -> dict[str, Any]:
    return {"machine": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M")}


class Tracker:
    """Evaluates at every multiple of EVAL_EVERY steps; times the evaluations; stops at the target."""

    def __init__(self, evaluate, target: float | None = TARGET):
        self.evaluate, self.target = evaluate, target
        self.next = EVAL_EVERY
        self.history: list[tuple[int, float]] = []
        self.eval_seconds = 0.0
        self.reached: int | None = None
        self.t0 = time.perf_counter()
        self.reached_wall: float | None = None
        self.reached_eval: float | None = None

    def due(self, steps_after: int) -> bool:
        return self.next <= steps_after

    def run(self, policy_like) -> bool:
        t = time.perf_counter()
        ret = float(np.mean(self.evaluate(policy_like, self.next)))
        self.eval_seconds += time.perf_counter() - t
        self.history.append((self.next, ret))
        self.next += EVAL_EVERY
        if self.target is not None and ret >= self.target and self.reached is None:
            self.reached = self.history[-1][0]
            self.reached_wall = time.perf_counter() - self.t0
            self.reached_eval = self.eval_seconds
            return True
        return False

    def record(self) -> dict[str, Any]:
        total = time.perf_counter() - self.t0
        wall = self.reached_wall if self.reached is not None else total
        ev = self.reached_eval if self.reached is not None else self.eval_seconds
        return {"steps_to_target": self.reached, "wall_s": round(wall, 2), "train_wall_s": round(wall - ev, 2),
                "eval_s": round(ev, 2), "history": self.history}


# -- fedloom ------------------------------------------------------------------------------------------------------
def fedloom_run(kind: str, env_id: str, seed: int, max_steps: int, cfg: dict, target: float | None,
                hidden=(64, 64), log_std_init: float = 0.0) -> dict[str, Any]:
    torch.manual_seed(seed)
    eval_env = make_vector_env(env_id, EVAL_EPISODES)
    tracker = Tracker(lambda pol, step: evaluate_policy(pol, eval_env, seed=10_000 * (seed + 1) + step), target)
    if kind == "ppo":
        c = PPOConfig(**cfg)
        learner = PPO(make_vector_env(env_id, c.n_envs), c, seed=seed, hidden=hidden, log_std_init=log_std_init)
    else:
        c = TRPOConfig(**cfg)
        learner = TRPO(make_vector_env(env_id, c.n_envs), c, seed=seed, hidden=hidden, log_std_init=log_std_init)
    per_iter = c.n_envs * c.n_steps

    def callback(lrn, steps: int) -> bool:
        # the evaluations whose step falls inside the next segment see the policy that collects it
        upto = steps + per_iter if steps < max_steps else steps
        while tracker.due(upto) and tracker.next <= max_steps:
            if tracker.run(lrn.policy):
                return True
        return False

    tracker.t0 = time.perf_counter()
    out = learner.learn(max_steps, callback)
    rec = tracker.record()
    rec.update(library="fedloom", algo=kind, env=env_id, seed=seed, steps=out["steps"], config=cfg,
               episode_returns=learner.collector.episode_returns)
    return rec


# -- stable-baselines3 (benchmark-only) -----------------------------------------------------------------------------
def sb3_run(kind: str, env_id: str, seed: int, max_steps: int, target: float | None) -> dict[str, Any]:
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy as sb3_evaluate

    eval_env = make_vec_env(env_id, n_envs=EVAL_EPISODES, seed=10_000 * (seed + 1))

    def lin(v):
        return lambda progress_remaining: progress_remaining * v

    if kind == "ppo_defaults":  # SB3's default PPO, NT = 2048 split over 4 actors like fedloom's Table-1 runs
        env = make_vec_env(env_id, n_envs=4, seed=seed)
        model = SB3PPO("MlpPolicy", env, n_steps=512, seed=seed, device="cpu")
    elif kind == "ppo":
        z = ZOO_PPO_CARTPOLE
        env = make_vec_env(env_id, n_envs=z["n_envs"], seed=seed)
        model = SB3PPO("MlpPolicy", env, n_steps=z["n_steps"], batch_size=z["batch_size"], gae_lambda=z["gae_lambda"],
                       gamma=z["gamma"], n_epochs=z["n_epochs"], ent_coef=0.0, learning_rate=lin(1e-3),
                       clip_range=lin(0.2), seed=seed, device="cpu")
    else:
        from sb3_contrib import TRPO as SB3TRPO

        env = make_vec_env(env_id, n_envs=2, seed=seed)
        model = SB3TRPO("MlpPolicy", env, n_steps=512, batch_size=512, cg_damping=1e-3, gae_lambda=0.98, gamma=0.99,
                        learning_rate=1e-3, n_critic_updates=20, seed=seed, device="cpu")
    tracker = Tracker(lambda m, step: sb3_evaluate(m, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True)[0],
                      target)

    class Cb(BaseCallback):
        def _on_step(self) -> bool:
            while tracker.due(self.num_timesteps):
                if tracker.run(self.model):
                    return False
            return True

    tracker.t0 = time.perf_counter()
    model.learn(max_steps, callback=Cb())
    rec = tracker.record()
    rec.update(library="sb3", algo=kind, env=env_id, seed=seed, steps=int(model.num_timesteps),
               last100=float(np.mean([e["r"] for e in model.ep_info_buffer])))  # SB3 keeps the last 100 episodes
    return rec


def save(part: str, records: list[dict]) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"rl_{part}.json")
    old = []
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    with open(path, "w") as f:
        json.dump(old + records, f, indent=1)


# -- part 1: CartPole steps and wall time to 475 -----------------------------------------------------------------------
def cartpole(args) -> list[dict]:
    runs = {
        "fedloom_ppo": lambda s: fedloom_run("ppo", "CartPole-v1", s, MAX_STEPS, ZOO_PPO_CARTPOLE, TARGET),
        "sb3_ppo": lambda s: sb3_run("ppo", "CartPole-v1", s, MAX_STEPS, TARGET),
        "fedloom_trpo": lambda s: fedloom_run("trpo", "CartPole-v1", s, MAX_STEPS, ZOO_TRPO_CARTPOLE, TARGET),
        "sb3_trpo": lambda s: sb3_run("trpo", "CartPole-v1", s, MAX_STEPS, TARGET),
    }
    out = []
    for seed in args.seeds:  # interleaved, so machine load affects every library alike
        for name in args.runs:
            l0 = load()
            rec = runs[name](seed)
            rec.pop("episode_returns", None)
            rec.update(run=name, load_before=round(l0, 2), load_after=round(load(), 2), **machine())
            print(f"{name} seed {seed}: steps to {TARGET:.0f} = {rec['steps_to_target']}, wall {rec['wall_s']} s "
                  f"(train {rec['train_wall_s']} s), load {l0:.2f}->{rec['load_after']:.2f}", flush=True)
            out.append(rec)
    for name in args.runs:
        rs = [r for r in out if r["run"] == name]
        steps = [r["steps_to_target"] if r["steps_to_target"] is not None else float("inf") for r in rs]
        print(f"{name}: steps {steps} median {statistics.median(steps)}; wall median "
              f"{statistics.median(r['wall_s'] for r in rs):.1f} s, train wall median "
              f"{statistics.median(r['train_wall_s'] for r in rs):.1f} s")
    return out


# -- part 2: the PPO paper's Table 1 question at small scale ------------------------------------------------------------
SB3_DEFAULT_PPO = {"n_envs": 4, "n_steps": 512, "batch_size": 64, "n_epochs": 10, "lr": 3e-4, "gamma": 0.99,
                   "gae_lambda": 0.95, "clip_eps": 0.2, "ent_coef": 0.0, "vf_coef": 0.5, "max_grad_norm": 0.5}
BASELINES_TRPO = {"n_envs": 4, "n_steps": 256, "max_kl": 0.01, "cg_iters": 10, "cg_damping": 0.1, "gamma": 0.99,
                  "gae_lambda": 0.98, "vf_iters": 5, "vf_lr": 1e-3}  # openai/baselines trpo_mpi defaults
TABLE1 = {
    "no clipping or penalty": ("ppo", {"objective": "none"}),
    "clip eps=0.1": ("ppo", {"clip_eps": 0.1}),
    "clip eps=0.2": ("ppo", {"clip_eps": 0.2}),
    "clip eps=0.3": ("ppo", {"clip_eps": 0.3}),
    "adaptive KL d_targ=0.01": ("ppo", {"objective": "kl_penalty", "kl_target": 0.01, "kl_beta": 1.0}),
    "TRPO delta=0.01": ("trpo", {}),
    "SB3 PPO defaults (reference)": ("sb3", {}),
}


def table1(args) -> list[dict]:
    """Each variant for ``--steps`` steps on ``--env``: SB3's default PPO hyperparameters (NT = 2048 split over 4
    actors; the paper's MuJoCo setting is the same but for T=2048 and one actor) with only the surrogate changed,
    and TRPO with openai/baselines' defaults. Score = mean return of the last 100 training episodes (the paper's
    Table 1 metric), normalised per environment so that a random policy scores 0 and the best variant 1."""
    global EVAL_EVERY
    EVAL_EVERY = args.eval_every
    out = []
    for seed in args.seeds:
        for name in args.variants:
            kind, over = TABLE1[name]
            l0 = load()
            t0 = time.perf_counter()
            if kind == "sb3":  # the reference: SB3's own PPO with its defaults, same steps and evaluation
                rec = sb3_run("ppo_defaults", args.env, seed, args.steps, target=None)
                rec["final_eval"] = rec["history"][-1][1] if rec["history"] else float("nan")
            else:
                base = SB3_DEFAULT_PPO if kind == "ppo" else BASELINES_TRPO
                fields = (PPOConfig if kind == "ppo" else TRPOConfig).model_fields
                extra = {k: v for k, v in _overrides(args.set).items() if k in fields}  # e.g. gamma=0.9 (Pendulum)
                rec = fedloom_table1_run(kind, args.env, seed, args.steps, {**base, **extra, **over})
            rec.update(run=name, seconds=round(time.perf_counter() - t0, 1), load_before=round(l0, 2),
                       load_after=round(load(), 2), **machine())
            print(f"{args.env} {name} seed {seed}: last-100 {rec['last100']:.1f}, final eval {rec['final_eval']:.1f}"
                  f" ({rec['seconds']:.0f} s)", flush=True)
            out.append(rec)
    return out


def _overrides(items: list[str] | None) -> dict[str, Any]:
    import yaml

    return {k: yaml.safe_load(v) for k, _, v in (x.partition("=") for x in items or [])}


def fedloom_table1_run(kind: str, env_id: str, seed: int, steps: int, cfg: dict) -> dict:
    rec = fedloom_run(kind, env_id, seed, steps, cfg, target=None)
    # the learner's own episode log: the paper scores the mean return of the last 100 training episodes
    rec["last100"] = float(np.mean(rec.pop("episode_returns")[-100:]))
    rec["final_eval"] = rec["history"][-1][1] if rec["history"] else float("nan")
    return rec


def random_score(env_id: str, episodes: int = 100, seed: int = 0) -> float:
    venv = make_vector_env(env_id, episodes)
    venv.reset(seed=seed)
    venv.action_space.seed(seed)
    ret = np.zeros(episodes)
    running = np.ones(episodes, dtype=bool)
    while running.any():
        _, r, term, trunc, _ = venv.step(venv.action_space.sample())
        ret += np.where(running, r, 0.0)
        running &= ~(term | trunc)
    return float(ret.mean())


# -- part 3: federated vs independent PPO on heterogeneous CartPoles ---------------------------------------------------
def fed_config(args, seed: int, rounds: int, num_clients: int, algorithm: str = "fedppo") -> dict:
    import yaml

    with open(os.path.join(os.path.dirname(__file__), "..", "examples", "fedppo_cartpole.yaml")) as f:
        raw = yaml.safe_load(f)
    raw.update(seed=seed, rounds=rounds, cohort_size=num_clients, eval_every=args.eval_every, progress=False,
               checkpoint_every=0)
    raw["data"]["num_clients"] = num_clients
    raw["algorithm"]["name"] = algorithm
    for ov in args.set or []:
        key, _, val = ov.partition("=")
        node = raw
        for part in key.split(".")[:-1]:
            node = node.setdefault(part, {})
        node[key.split(".")[-1]] = yaml.safe_load(val)
    return raw


def federated(args) -> list[dict]:
    """FedPPO over all clients vs each client training alone with the same local work per round (the same
    algorithm on a one-client federation: collect, PPO epochs, no averaging), then evaluated on held-out physics."""
    from fedloom.config import validate_config
    from fedloom.rl.environments import ClientEnvironments
    from fedloom.simulation import Simulation

    out = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        cfg = validate_config(fed_config(args, seed, args.rounds, args.clients))
        sim = Simulation(cfg)
        recs = sim.run()
        fed_wall = time.perf_counter() - t0
        data: ClientEnvironments = sim.data
        last = recs[-1]
        curve = [(r["round"], r.get("return_mean"), r.get("return_heldout_mean"), r.get("policy_kl"))
                 for r in recs if r.get("return_mean") is not None]
        fed = {"run": "federated", "seed": seed, "return_clients_mean": last["return_mean"],
               "return_heldout_last3": float(np.mean([c[2] for c in curve[-3:]])),
               "return_heldout_mean": last["return_heldout_mean"], "return_heldout": last["return_heldout"],
               "curve": curve, "policy_kl": [r["policy_kl"] for r in recs], "wall_s": round(fed_wall, 1),
               "steps_per_client": args.rounds * _steps_per_round(cfg),
               "dynamics": data.dynamics, "heldout_dynamics": data.heldout}
        print(f"seed {seed} federated: clients {fed['return_clients_mean']:.1f}, held-out "
              f"{fed['return_heldout_mean']:.1f} ({fed_wall:.0f} s)", flush=True)
        indep = []
        for k, dyn in enumerate(data.dynamics):
            c1 = validate_config(fed_config(args, seed, args.rounds, 1))
            one = ClientEnvironments(data.env_id, [dyn], data.heldout)
            s1 = Simulation(c1, data=one)
            rs1 = [r for r in s1.run() if r.get("return_mean") is not None]
            r1 = rs1[-1]
            indep.append({"client": k, "return_own": r1["return_mean"], "return_heldout_mean": r1["return_heldout_mean"],
                          "return_heldout": r1["return_heldout"],
                          "return_heldout_last3": float(np.mean([r["return_heldout_mean"] for r in rs1[-3:]])),
                          "curve": [(r["round"], r["return_mean"], r["return_heldout_mean"]) for r in rs1]})
            print(f"  independent client {k}: own {r1['return_mean']:.1f}, held-out {r1['return_heldout_mean']:.1f}",
                  flush=True)
        ind = {"run": "independent", "seed": seed, "clients": indep,
               "return_own_mean": float(np.mean([c["return_own"] for c in indep])),
               "return_heldout_mean": float(np.mean([c["return_heldout_mean"] for c in indep])),
               "return_heldout_best": float(np.max([c["return_heldout_mean"] for c in indep])),
               "return_heldout_worst": float(np.min([c["return_heldout_mean"] for c in indep])),
               "return_heldout_last3": float(np.mean([c["return_heldout_last3"] for c in indep]))}
        print(f"seed {seed} independent: own {ind['return_own_mean']:.1f}, held-out mean "
              f"{ind['return_heldout_mean']:.1f} (best {ind['return_heldout_best']:.1f}, worst "
              f"{ind['return_heldout_worst']:.1f})", flush=True)
        for r in (fed, ind):
            r.update(config=fed_config(args, seed, args.rounds, args.clients), **machine())
            out.append(r)
    return out


def _steps_per_round(cfg) -> int:
    a = cfg.algorithm.params
    return a["n_envs"] * a["n_steps"] * a.get("local_iterations", 1)


# -- part 0: vector-env stepping cost ----------------------------------------------------------------------------------
def envs(args) -> list[dict]:
    """Per-step cost of gymnasium's SyncVectorEnv (what fedloom uses) vs its batched CartPoleVectorEnv, next to
    the policy's per-step forward pass (fedloom.rl.policies.ActorCritic.sample)."""
    from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

    from fedloom.rl.policies import ActorCritic

    out = []
    for n in args.num_envs:
        acts = [np.arange(n) % 2, (np.arange(n) + 1) % 2]
        for name, venv in (("SyncVectorEnv (SAME_STEP autoreset)", make_vector_env("CartPole-v1", n)),
                           ("CartPoleVectorEnv (NEXT_STEP autoreset)", CartPoleVectorEnv(num_envs=n))):
            venv.reset(seed=0)
            for i in range(200):
                venv.step(acts[i % 2])
            t = time.perf_counter()
            for i in range(args.steps):
                venv.step(acts[i % 2])
            us = (time.perf_counter() - t) / args.steps * 1e6
            out.append({"part": "envs", "what": name, "num_envs": n, "us_per_vector_step": round(us, 1)})
            print(f"{name}, {n} envs: {us:.0f} us per vector step", flush=True)
        net = ActorCritic(4, "categorical", 2)
        obs = torch.zeros(n, 4)
        with torch.no_grad():
            for _ in range(200):
                net.sample(obs)
            t = time.perf_counter()
            for _ in range(args.steps):
                net.sample(obs)
        us = (time.perf_counter() - t) / args.steps * 1e6
        out.append({"part": "envs", "what": "policy sample (64-64 MLPs)", "num_envs": n, "us_per_vector_step": round(us, 1)})
        print(f"policy sample, {n} envs: {us:.0f} us per vector step", flush=True)
    out[0].update(load=round(load(), 2), **machine())
    return out


# -- summary: markdown tables from the JSON records ---------------------------------------------------------------------
def _load(part: str) -> list[dict]:
    path = os.path.join(RESULTS, f"rl_{part}.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def summary(args) -> list[dict]:
    for tag in ("", "_2"):
        _cartpole_table(_load("cartpole" + tag), args, tag)
    _rest(args)
    return []


def _cartpole_table(cp: list[dict], args, tag: str) -> None:
    if cp:
        print(f"\nrl_cartpole{tag}.json ({cp[0]['date']} .. {cp[-1]['date']})")
        print("| run | seeds | steps to 475 (per seed) | median steps | median wall s | median train wall s | "
              "ms per 1k steps (median) | load |")
        print("|---|---|---|---|---|---|---|---|")
        for name in ("fedloom_ppo", "sb3_ppo", "fedloom_trpo", "sb3_trpo"):
            shown = -1
            for seeds in (args.seeds, None):  # the protocol's seeds, then all seeds recorded (if more)
                rs = [r for r in cp if r["run"] == name and (seeds is None or r["seed"] in seeds)]
                if not rs or len(rs) == shown:
                    continue
                shown = len(rs)
                st = [r["steps_to_target"] if r["steps_to_target"] is not None else float("inf") for r in rs]
                per_k = [1000 * r["train_wall_s"] / r["steps_to_target"] for r in rs if r["steps_to_target"]]
                print(f"| {name} | {len(rs)} | {', '.join(str(x) for x in st) if len(rs) <= 3 else '-'} | "
                      f"{statistics.median(st):.0f} | {statistics.median(r['wall_s'] for r in rs):.1f} | "
                      f"{statistics.median(r['train_wall_s'] for r in rs):.1f} | {statistics.median(per_k):.2f} | "
                      f"{min(r['load_before'] for r in rs):.1f}-{max(r['load_after'] for r in rs):.1f} |")


def _rest(args) -> None:
    t1 = _load("table1")
    for env in sorted({r["env"] for r in t1}):
        rs = [r for r in t1 if r["env"] == env]
        rnd = random_score(env)
        means = {n: float(np.mean([r["last100"] for r in rs if r["run"] == n])) for n in TABLE1 if
                 any(r["run"] == n for r in rs)}
        best = max(m for n, m in means.items() if TABLE1[n][0] != "sb3")  # the best fedloom variant scores 1
        print(f"\n{env}, {rs[0]['steps']} steps, seeds {sorted({r['seed'] for r in rs})}; random policy {rnd:.1f}")
        print("| variant | last-100 return (mean +- sd over seeds) | per seed | normalised score | final eval (10 ep.) "
              "| s per run |")
        print("|---|---|---|---|---|---|")
        for n, m in means.items():
            v = [r for r in rs if r["run"] == n]
            x = [r["last100"] for r in v]
            print(f"| {n} | {m:.1f} +- {np.std(x):.1f} | {', '.join(f'{a:.1f}' for a in x)} | "
                  f"{(m - rnd) / (best - rnd):.2f} | {np.mean([r['final_eval'] for r in v]):.1f} | "
                  f"{np.mean([r['seconds'] for r in v]):.0f} |")
    fed = _load("federated")
    if fed:
        print("\n| seed | federated: held-out (mean of last 3 evals) | federated: clients' own envs | independent: "
              "held-out mean (best, worst) (mean of last 3 evals) | independent: own env mean | server policy KL per "
              "round (mean, max) | fed wall s |")
        print("|---|---|---|---|---|---|---|")
        for seed in sorted({r["seed"] for r in fed}):
            f_ = [r for r in fed if r["seed"] == seed and r["run"] == "federated"][-1]
            i_ = [r for r in fed if r["seed"] == seed and r["run"] == "independent"][-1]
            print(f"| {seed} | {f_['return_heldout_mean']:.1f} ({f_['return_heldout_last3']:.1f}) | "
                  f"{f_['return_clients_mean']:.1f} | {i_['return_heldout_mean']:.1f} ({i_['return_heldout_best']:.1f}, "
                  f"{i_['return_heldout_worst']:.1f}) ({i_['return_heldout_last3']:.1f}) | {i_['return_own_mean']:.1f} | {np.mean(f_['policy_kl']):.4f}, {np.max(f_['policy_kl']):.4f} | "
                  f"{f_['wall_s']:.0f} |")


def main() -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="part", required=True)
    c = sub.add_parser("cartpole")
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    c.add_argument("--runs", nargs="+", default=["fedloom_ppo", "sb3_ppo", "fedloom_trpo", "sb3_trpo"])
    c.add_argument("--no-save", action="store_true")
    c.add_argument("--tag", default="", help="save to rl_cartpole<tag>.json (e.g. _2 for a second invocation)")
    sm = sub.add_parser("summary", help="markdown tables from benchmarks/results/rl_*.json")
    sm.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the CartPole protocol's seeds")
    sm.set_defaults(no_save=True)
    e = sub.add_parser("envs")
    e.add_argument("--num-envs", type=int, nargs="+", default=[2, 8])
    e.add_argument("--steps", type=int, default=3000)
    e.add_argument("--no-save", action="store_true")
    t = sub.add_parser("table1")
    t.add_argument("--env", default="Acrobot-v1")
    t.add_argument("--steps", type=int, default=200_000)
    t.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    t.add_argument("--variants", nargs="+", default=[v for v in TABLE1 if TABLE1[v][0] != "sb3"], choices=list(TABLE1))
    t.add_argument("--eval-every", type=int, default=20_000)
    t.add_argument("--set", nargs="*", help="hyperparameter overrides for every variant, e.g. gamma=0.9 lr=1e-3")
    t.add_argument("--no-save", action="store_true")
    f = sub.add_parser("federated")
    f.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    f.add_argument("--rounds", type=int, default=30)
    f.add_argument("--clients", type=int, default=8)
    f.add_argument("--eval-every", type=int, default=5)
    f.add_argument("--set", nargs="*", help="overrides of examples/fedppo_cartpole.yaml, e.g. algorithm.n_envs=8")
    f.add_argument("--no-save", action="store_true")
    a = ap.parse_args()
    records = {"cartpole": cartpole, "federated": federated, "table1": table1, "envs": envs,
               "summary": summary}[a.part](a)
    if not a.no_save:
        save(a.part + getattr(a, "tag", ""), records)


if __name__ == "__main__":
    main()
