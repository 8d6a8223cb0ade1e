"""The round loop on its own: any ClientRuntime that answers a broadcast with bytes will do -- no simulation, no
engine. This is the seam a networked runtime plugs into."""

import torch

from fedloom import wire
from fedloom.algorithms.server_opt import ServerSGD, SGDParams
from fedloom.core import (
    AlgorithmParams,
    ClientPipeline,
    LocalSchedule,
    LocalSGDAlgorithm,
    PlainEncoder,
    RoundInfo,
    RunContext,
    Server,
    ServerPipeline,
    ServerState,
    WeightedMean,
    run_round,
)


class Plan:
    def __init__(self, sampled, reporting, dropped):
        self.sampled, self.reporting, self.dropped = sampled, reporting, dropped


class Planner:
    def __init__(self):
        self.seen = []

    def plan(self, rnd, msg_bytes):
        self.seen.append(msg_bytes)
        return Plan([0, 1, 2, 3], [0, 1, 2], {3: "dropout"})


class ScriptedClients:
    """Clients that read the broadcast from its bytes and answer with fixed updates; client 2 sends garbage."""

    def __init__(self):
        self.got = None

    def round_metrics(self):
        return {"transport": "scripted"}

    def run(self, rnd, down, clients):
        self.got = wire.decode(down.shared)
        pipe = ClientPipeline([], PlainEncoder())
        from fedloom.core import ClientReport

        out = []
        for k in clients:
            if k == 2:
                out.append((k, b"FLM1garbage"))
                continue
            rep = ClientReport(k, {"w": torch.full((2,), float(k + 1))}, 10 * (k + 1), 0.1 * (k + 1))
            out.append((k, pipe.run(rep, {}, RoundInfo(rnd, k))))
        return out


def _server(planner):
    params = {"w": torch.zeros(2)}
    ctx = RunContext(0, 3, 3, torch.device("cpu"), torch.nn.Identity(), {}, {"w": ((2,), torch.float32)}, None,
                     None, LocalSchedule(lr=0.1), ServerSGD(SGDParams(lr=1.0)))  # type: ignore[arg-type]

    class NoEval(LocalSGDAlgorithm):
        def evaluate(self, ctx, state):
            return {"test_accuracy": 0.5}

    alg = NoEval(AlgorithmParams())
    pipe = ServerPipeline([], PlainEncoder(), ctx.param_spec, alg.check_report, ctx.device)
    return Server(ctx, alg, planner, pipe, WeightedMean("samples")), ServerState(params, {})


def test_six_steps_with_scripted_clients():
    planner, clients = Planner(), ScriptedClients()
    server, state = _server(planner)
    new, rec = run_round(server, clients, state, 1)
    # 2: the clients decoded the broadcast from bytes: the model and the round number
    assert torch.equal(clients.got.tensors["w"], torch.zeros(2)) and clients.got.meta["round"] == 1
    assert planner.seen == [rec["bytes_down"] // 4]  # the planner saw the shared message's size
    # 5: client 2's garbage is rejected, the others averaged with weights 10 and 20
    assert [r["client"] for r in rec["rejected"]] == [2] and rec["reported"] == 2
    torch.testing.assert_close(new.params["w"], torch.full((2,), (10 * 1 + 20 * 2) / 30))
    assert new.round == 1 and rec["reported_ids"] == [0, 1]
    assert rec["train_loss"] == (10 * 0.1 + 20 * 0.2) / 30
    assert rec["dropped"] == [{"client": 3, "reason": "dropout"}] and rec["test_accuracy"] == 0.5
    assert rec["transport"] == "scripted"  # the runtime's own measurements join the record
    # bytes: every sampled client (dropouts included) received the shared message; uploads as sent
    assert rec["bytes_down"] == 4 * len(wire.encode({"w": torch.zeros(2)}, {"round": 1}))
    assert rec["bytes_up"] == sum(len(m) for _, m in clients.run(1, *_down(server, state)))


def _down(server, state):
    shared = server.shared_message(state, 1)
    return server.broadcast(state, 1, shared, [0, 1, 2, 3]), [0, 1, 2]


def test_a_client_that_does_not_reply_is_dropped():
    class Silent(ScriptedClients):
        def run(self, rnd, down, clients):
            return [u for u in super().run(rnd, down, clients) if u[0] != 1]  # client 1 never answers

    server, state = _server(Planner())
    new, rec = run_round(server, Silent(), state, 1)
    assert {"client": 1, "reason": "no reply"} in rec["dropped"] and rec["reported_ids"] == [0]
    torch.testing.assert_close(new.params["w"], torch.full((2,), 1.0))


def test_nothing_accepted_keeps_the_model():
    class AllBad(ScriptedClients):
        def run(self, rnd, down, clients):
            return [(k, b"junk") for k in clients]

    server, state = _server(Planner())
    new, rec = run_round(server, AllBad(), state, 1)
    assert torch.equal(new.params["w"], torch.zeros(2)) and rec["reported"] == 0 and rec["train_loss"] is None
