"""Typed run configuration (the edge: YAML and CLI overrides are parsed here only).

A component (dataset, partitioner, model, algorithm, engine, server optimizer) is written either as its name
or as a mapping ``{name: ..., <param>: ...}``; its parameters are validated by the component's own pydantic
model, so every error names its dotted field (``algorithm.mu``) and, for choices, the allowed values.
"""

from __future__ import annotations

import copy
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedloom import registry as R
from fedloom.core.compat import Features, check
from fedloom.crypto.secagg import SecureAggregationConfig
from fedloom.privacy import PrivacyConfig
from fedloom.robust import AGGREGATORS, ATTACKS
from fedloom.system import SystemConfig

#: config fields that only change how a run is shown or how fast it goes, not what it computes: a resume and a
#: sweep compare configs without them
VOLATILE = ("progress", "threads", "tracking")


class ConfigError(ValueError):
    """An invalid run configuration; ``errors`` holds one message per bad field."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("invalid config:\n" + "\n".join(f"  {e}" for e in errors))


class Component(BaseModel):
    """A registered component: its name plus its own (validated) parameters."""

    model_config = ConfigDict(extra="allow")
    name: str

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    dataset: Component = Field(default_factory=lambda: Component(name="digits"))
    partition: Component = Field(default_factory=lambda: Component(name="iid"))
    num_clients: int = Field(20, ge=1, description="number of clients the training set is split into")


class ClientOptimizerConfig(_Strict):
    """The client's step rule (fedloom.optim, PyTorch's semantics): its name, or ``{name: ..., <param>: ...}``.
    The learning rate, its schedule, SGD's momentum and the weight decay stay in ``client``."""

    name: Literal["sgd", "adam", "adamw"] = Field("sgd", description="sgd (with client.momentum), adam, adamw")
    betas: tuple[float, float] = Field((0.9, 0.999), description="adam/adamw moment decay rates (beta1, beta2)")
    eps: float = Field(1e-8, gt=0, description="adam/adamw denominator epsilon")
    persist: bool = Field(False, description="keep each client's optimizer state between its rounds (client state, "
                                             "checkpointed); false = restart it every round")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> ClientOptimizerConfig:
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas {list(self.betas)}: each must be in [0, 1)")
        defaults = {n: type(self).model_fields[n].default for n in ("betas", "eps")}
        unused = [n for n, d in defaults.items() if getattr(self, n) != d] if self.name == "sgd" else []
        if unused:
            raise ValueError(f"{', '.join(unused)}: adam/adamw parameters only (name is sgd)")
        return self


class ClientConfig(_Strict):
    lr: float = Field(0.1, gt=0, description="client learning rate")
    epochs: int = Field(1, ge=1, description="local epochs E (ignored when local_steps is set)")
    batch_size: int | None = Field(10, ge=1, description="local batch B; null = full batch")
    local_steps: int | None = Field(None, ge=1, description="H local steps instead of epochs")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD heavy-ball momentum (optimizer sgd only)")
    weight_decay: float = Field(0.0, ge=0, description="L2 for sgd and adam, decoupled for adamw")
    optimizer: ClientOptimizerConfig = Field(default_factory=ClientOptimizerConfig,
                                             description="client optimizer: sgd, adam, adamw (fedloom.optim)")
    lr_schedule: Component | None = Field(None, description="client lr schedule (fedloom.schedules): noam, "
                                                            "step, inverse; null = constant")

    @model_validator(mode="after")
    def _momentum_is_sgds(self) -> ClientConfig:
        if self.momentum and self.optimizer.name != "sgd":
            raise ValueError(f"client.momentum / client.optimizer: momentum {self.momentum} is SGD's; "
                             f"{self.optimizer.name} uses client.optimizer.betas")
        return self


class TrackingConfig(_Strict):
    """Experiment trackers fed each round's record (fedloom.metrics.tracking)."""

    tensorboard: bool = Field(False, description="write TensorBoard event files to RUN_DIR/tensorboard "
                                                 "(needs the tracking extra)")


class RunConfig(_Strict):
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$", description="used in the run directory's name")
    seed: int = 0
    rounds: int = Field(20, ge=1)
    cohort_size: int = Field(10, ge=1, description="clients sampled per round (uniformly, without replacement)")
    eval_every: int = Field(1, ge=1, description="evaluate every N rounds (and always after the last)")
    eval_batch_size: int = Field(4096, ge=1)
    engine: Component = Field(default_factory=lambda: Component(name="vectorized"))
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int | None = Field(None, ge=1, description="torch intra-op threads; default: the cores not already busy "
                                 "(cores minus the 1-minute load average, at least 1)")
    data: DataConfig = Field(default_factory=DataConfig)
    model: Component = Field(default_factory=lambda: Component(name="mlp"))
    task: Component = Field(default_factory=lambda: Component(name="classification"),
                            description="the loss and metrics (fedloom.models.tasks): classification, regression")
    algorithm: Component = Field(default_factory=lambda: Component(name="fedavg"))
    client: ClientConfig = Field(default_factory=ClientConfig)
    server_optimizer: Component = Field(default_factory=lambda: Component(name="sgd"))
    codecs: list[Component] = Field(default_factory=list, description="update codec chain, applied in order "
                                    "on the client and undone in reverse on the server (fedloom.codecs)")
    progress: bool = Field(True, description="show a progress bar")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="TensorBoard event files")
    # -- FL system essentials (Kairouz et al.): fedloom.system, fedloom.robust, fedloom.privacy --
    system: SystemConfig = Field(default_factory=SystemConfig, description="availability, sampling, dropouts")
    aggregator: Component = Field(default_factory=lambda: Component(name="mean"), description="robust rule")
    attack: Component | None = Field(None, description="simulated Byzantine clients (fedloom.robust)")
    privacy: PrivacyConfig | None = Field(None, description="DP-FedAvg clipping, noise and accounting")
    checkpoint_every: int = Field(10, ge=0, description="checkpoint the server state every N rounds (0 = off)")
    secure_aggregation: SecureAggregationConfig | None = Field(
        None, description="Paillier secure aggregation (fedloom.crypto.secagg); null = off")


_COMPONENTS = {
    "engine": R.ENGINES,
    "data.dataset": R.DATASETS,
    "data.partition": R.PARTITIONERS,
    "model": R.MODELS,
    "task": R.TASKS,
    "algorithm": R.ALGORITHMS,
    "server_optimizer": R.SERVER_OPTIMIZERS,
    "client.lr_schedule": R.LR_SCHEDULES,
    "aggregator": AGGREGATORS,
    "attack": ATTACKS,
}


def _get(cfg: BaseModel, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _fmt_loc(prefix: str, loc: tuple) -> str:
    parts = [prefix] if prefix else []
    parts += [str(x) for x in loc if x not in ("function-after", "function-before")]
    return ".".join(parts)


def _default_names(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``raw`` where a component given as a mapping without ``name`` (``aggregator: {max_norm: 10}``, or
    the override ``aggregator.max_norm=10``) gets its default component's name."""
    raw = copy.deepcopy(raw)
    defaults = RunConfig()
    for path in _COMPONENTS:
        *parents, leaf = path.split(".")
        node: Any = raw
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        default = _get(defaults, path)
        if isinstance(node, dict) and isinstance(node.get(leaf), dict) and "name" not in node[leaf] and default:
            node[leaf] = {"name": default.name, **node[leaf]}
    return raw


def _numeric(annotation: Any) -> str | None:
    """"an integer" / "a number" when a field's annotation is int / float (or optional), else None."""
    args = typing.get_args(annotation) or (annotation,)
    if bool in args:
        return None
    return "an integer" if int in args else "a number" if float in args else None


def _bool_errors(model: type[BaseModel], raw: Any, prefix: str) -> list[str]:
    """``true``/``false`` given for an integer or number field (pydantic would read ``rounds: true`` as 1): one
    message per such field, by dotted name, through the nested sections."""
    if not isinstance(raw, dict):
        return []
    errors = []
    for key, value in raw.items():
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            continue
        where = f"{prefix}{key}"
        want = _numeric(field.annotation)
        if isinstance(value, bool) and want:
            errors.append(f"{where}: expected {want}, got {str(value).lower()}")
            continue
        for sub in typing.get_args(field.annotation) or (field.annotation,):
            if isinstance(sub, type) and issubclass(sub, BaseModel) and sub is not Component:
                errors += _bool_errors(sub, value, f"{where}.")
    return errors


def validate_config(raw: dict[str, Any]) -> RunConfig:
    """Validate a raw mapping into a :class:`RunConfig`; components' parameters are filled with defaults."""
    import fedloom.components  # noqa: F401  (register everything)

    if not isinstance(raw, dict):
        raise ConfigError([f"config must be a mapping, got {type(raw).__name__}"])
    raw = _default_names(raw)
    errors = _bool_errors(RunConfig, raw, "")
    if errors:
        raise ConfigError(errors)
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError([f"{_fmt_loc('', err['loc'])}: {err['msg']}" for err in e.errors()]) from None
    errors: list[str] = []
    for path, reg in _COMPONENTS.items():
        comp: Component = _get(cfg, path)
        if comp is None:  # an optional component that is off
            continue
        if path == "data.dataset" and comp.name in R.ENVIRONMENTS:
            reg = R.ENVIRONMENTS
        resolved = _validate_component(path, comp, reg, errors)
        if resolved is not None:
            parent, _, leaf = path.rpartition(".")
            setattr(_get(cfg, parent) if parent else cfg, leaf, resolved)
    errors += _validate_codecs(cfg)
    if not errors:
        errors += check(features(cfg))
    if cfg.cohort_size > cfg.data.num_clients:
        errors.append(f"cohort_size: {cfg.cohort_size} exceeds data.num_clients={cfg.data.num_clients}")
    if errors:
        raise ConfigError(errors)
    return cfg


def features(cfg: RunConfig, secure_aggregation: Any = None, runtime: str = "simulation") -> Features:
    """What the compatibility rules (:mod:`fedloom.core.compat`) need to know about ``cfg``: read off the
    config and the components' declared traits. ``secure_aggregation`` overrides the config's section;
    ``runtime`` is where the run will execute (``simulation`` or ``deploy``)."""
    from fedloom.codecs import CODECS
    from fedloom.core.algorithm import CustomClientAlgorithm

    alg = R.ALGORITHMS.get(cfg.algorithm.name)
    traits = alg.traits
    sa = secure_aggregation if secure_aggregation is not None else cfg.secure_aggregation
    sa_on = sa is not None and (sa.enabled if isinstance(sa, SecureAggregationConfig) else dict(sa).get("enabled", True))
    so = cfg.server_optimizer
    return Features(
        algorithm=cfg.algorithm.name, plain_mean=traits.plain_mean, custom_client=issubclass(alg, CustomClientAlgorithm),
        uploads_model=traits.uploads_model, algorithm_data=traits.data, dataset=cfg.data.dataset.name,
        dataset_kind="environment" if cfg.data.dataset.name in R.ENVIRONMENTS else "labelled",
        codecs=tuple(c.name for c in cfg.codecs),
        structured_codecs=tuple(c.name for c in cfg.codecs if c.name in CODECS and CODECS.get(c.name).structured),
        secure_aggregation=bool(sa_on), privacy=cfg.privacy is not None,
        dp_exact_count=cfg.privacy is not None and cfg.privacy.adaptive and cfg.privacy.mode == "central"
        and cfg.privacy.count_noise_std == 0, sampling=cfg.system.sampling, aggregator=cfg.aggregator.name,
        max_norm=cfg.aggregator.params.get("max_norm") is not None, personalized_models=traits.personalized_models,
        averages_models=traits.averages_models, server_optimizer=so.name, server_lr=float(so.params.get("lr", 1.0)),
        server_momentum=float(so.params.get("momentum", 0.0)), runtime=runtime,
        client_optimizer=cfg.client.optimizer.name, optimizer_persist=cfg.client.optimizer.persist,
        client_momentum=cfg.client.momentum, sgd_only=traits.sgd_only)


def _validate_component(path: str, comp: Component, reg: R.Registry, errors: list[str]) -> Component | None:
    """``comp`` checked against ``reg`` and its own params model: the resolved component (defaults filled in),
    or None with messages naming ``path`` appended to ``errors``."""
    if comp.name not in reg:
        errors.append(f"{path}.name: unknown {reg.kind} {comp.name!r}; allowed: {', '.join(reg.names())}")
        return None
    bools = _bool_errors(reg.entry(comp.name).params, comp.params, f"{path}.")
    if bools:
        errors += bools
        return None
    try:
        p = reg.entry(comp.name).params.model_validate(comp.params)
    except ValidationError as e:
        errors += [f"{_fmt_loc(path, err['loc'])}: {err['msg']}" for err in e.errors()]
        return None
    return Component(name=comp.name, **p.model_dump())


def _validate_codecs(cfg: RunConfig) -> list[str]:
    """Each ``codecs.<i>`` entry against the codec registry, then the chain's composition rules."""
    from fedloom.codecs import CODECS, chain_errors

    errors: list[str] = []
    resolved = [_validate_component(f"codecs.{i}", comp, CODECS, errors) for i, comp in enumerate(cfg.codecs)]
    if not errors:
        cfg.codecs = resolved
        errors += chain_errors([(c.name, c.params) for c in resolved])
    return errors


def parse_value(text: str) -> Any:
    """A CLI override value, read as YAML (``3`` -> int, ``null`` -> None, ``[1,2]`` -> list)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides to a raw config mapping (returns a copy)."""
    out = copy.deepcopy(raw)
    errors = []
    for ov in overrides:
        key, sep, val = ov.partition("=")
        if not sep or not key:
            errors.append(f"override {ov!r}: expected key=value, e.g. rounds=3 or data.partition.alpha=0.1")
            continue
        node: Any = out
        parts = key.split(".")
        for part in parts[:-1]:
            if isinstance(node, list):  # e.g. codecs.1.bits=3
                if not part.isdigit() or int(part) >= len(node):
                    errors.append(f"override {ov!r}: {part!r} is not an index of a {len(node)}-entry list")
                    break
                i = int(part)
                if isinstance(node[i], str):
                    node[i] = {"name": node[i]}
                node = node[i]
                continue
            nxt = node.get(part)
            if isinstance(nxt, str):  # a component given by name: expand to a mapping to set a parameter
                nxt = {"name": nxt}
            elif nxt is None:
                nxt = {}
            elif not isinstance(nxt, (dict, list)):
                errors.append(f"override {ov!r}: {part!r} is not a section")
                break
            node[part] = nxt
            node = nxt
        else:
            if isinstance(node, list):
                if not parts[-1].isdigit() or int(parts[-1]) >= len(node):
                    errors.append(f"override {ov!r}: {parts[-1]!r} is not an index of a {len(node)}-entry list")
                    continue
                node[int(parts[-1])] = parse_value(val)
            else:
                node[parts[-1]] = parse_value(val)
    if errors:
        raise ConfigError(errors)
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a YAML config file (``name`` defaulting to the file's stem), or a ConfigError that
    says what is wrong with the file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError([f"config file {str(path)!r} is a directory; give a YAML file (a run's config is "
                           f"{str(path / 'config.yaml')!r})"])
    if not path.is_file():
        raise ConfigError([f"config file {str(path)!r} does not exist"])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML: {e}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not a text file (a YAML config is UTF-8 text)"]) from None
    except OSError as e:
        raise ConfigError([f"{path}: cannot be read: {e.strerror or e}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: a config is a mapping of fields (e.g. `rounds: 20`), got a "
                           f"{type(raw).__name__} ({str(raw)[:40]!r})"])
    if "name" not in raw:
        raw["name"] = path.stem
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    return validate_config(apply_overrides(read_config_file(path), overrides or []))


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
