"""fedloom's core: the round loop (:mod:`fedloom.core.loop`), its frozen types (:mod:`fedloom.core.types`), the
algorithm interfaces (:mod:`fedloom.core.algorithm`), the client and server pipelines
(:mod:`fedloom.core.pipeline`, :mod:`fedloom.core.aggregate`) and the compatibility rules
(:mod:`fedloom.core.compat`). It imports interfaces only: no algorithm, codec, crypto, data or model module."""

from fedloom.core.aggregate import Aggregator, WeightedMean, sample_weight, weighted_mean
from fedloom.core.algorithm import Algorithm, AlgorithmParams, CustomClientAlgorithm, LocalSGDAlgorithm
from fedloom.core.loop import ClientRuntime, Server, run_round
from fedloom.core.pipeline import ClientPipeline, ClientStage, Encoder, PlainEncoder, ServerPipeline
from fedloom.core.types import (
    Aggregate,
    Broadcast,
    ClientReport,
    LocalSchedule,
    Params,
    ParamSpec,
    RoundInfo,
    RunContext,
    ServerState,
    Task,
    client_batches,
    spec_of,
)

__all__ = ["Aggregate", "Aggregator", "Algorithm", "AlgorithmParams", "Broadcast", "ClientPipeline", "ClientReport",
           "ClientRuntime", "ClientStage", "CustomClientAlgorithm", "Encoder", "LocalSGDAlgorithm", "LocalSchedule",
           "Params", "ParamSpec", "PlainEncoder", "RoundInfo", "RunContext", "Server", "ServerPipeline", "ServerState",
           "Task", "WeightedMean", "client_batches", "run_round", "sample_weight", "spec_of", "weighted_mean"]
