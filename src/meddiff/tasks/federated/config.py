"""Federated config: a `meddiff train` config (task, model, diffusion, data, optimiser, schedule, run) plus a
``federated:`` section. Every site trains with the training sections unchanged; the ``federated`` section says
how many rounds, how many local optimiser steps per round, the strategy and the fault tolerance.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from meddiff.errors import MeddiffError, check_choice
from meddiff.nets.unet import check_keys
from meddiff.training import load_config, resolve_config

STRATEGIES = ("fedavg", "fedprox", "fedavgm")
SITE_BATCH = ("equal", "proportional")
MIN_SITE_BATCH = 2  # the update a site sends must never be the gradient of one image
LOOPBACK = "127.0.0.1"

FEDERATED_DEFAULTS: dict[str, Any] = {
    "strategy": "fedavg",          # fedavg, fedprox or fedavgm (Flower's strategies), weighted by site sample counts
    "proximal_mu": 0.0,            # FedProx mu (Li et al. 2020, eq. 2); applied as a decoupled proximal step
    "server_learning_rate": 1.0,   # FedAvgM (Hsu et al. 2019): global <- global - lr * momentum buffer of the
    "server_momentum": 0.0,        # ... pseudo-gradient (global - site average); lr 1, momentum 0 is FedAvg
    "rounds": 10,                  # federated rounds
    "local_steps": 50,             # optimiser steps (meddiff Trainer) per site per round
    "site_batch": "equal",         # equal: every site uses run.batch_size; proportional (simulate): site batches
                                   # ... in proportion to site sizes, summing to run.batch_size (see site_batches)
    "min_clients": 1,              # a round is aggregated when at least this many sites return weights
    "wait_clients": None,          # each round waits up to wait_timeout_s for this many sites (null: min_clients)
    "wait_timeout_s": 60.0,        # ... then goes on with the sites connected (at least min_clients)
    "round_timeout_s": 3600.0,     # a site that has not answered by then counts as dropped for that round
    "server_ema": None,            # decay per round of an EMA of the global weights (ema.safetensors); null: none
    "address": f"{LOOPBACK}:8088", # the server's gRPC address (host:port)
    "connect_timeout_s": 120.0,    # a client gives up when the server cannot be reached for this long
    "keep_checkpoints": 3,         # global checkpoints (one per round) kept in RUN_DIR/checkpoints
    "dp": None,                    # {clip, epsilon, delta}: local DP on each site's update (Flower's mechanism)
}
DP_KEYS = ("clip", "epsilon", "delta")


def split_config(config: dict, source: str = "the config") -> tuple[dict, dict]:
    """(training config, federated section with defaults filled and checked) from a FED.yaml mapping."""
    config = copy.deepcopy(config)
    fed = config.pop("federated", None)
    if fed is None:
        raise MeddiffError(f"{source} has no `federated:` section; add one (see configs/federated_tiny.yaml)")
    if not isinstance(fed, dict):
        raise MeddiffError(f"{source}: `federated` must be a mapping")
    check_keys("federated", fed, FEDERATED_DEFAULTS)
    fed = {**FEDERATED_DEFAULTS, **fed}
    check_choice("federated.strategy", fed["strategy"], STRATEGIES)
    check_choice("federated.site_batch", fed["site_batch"], SITE_BATCH)
    for key in ("rounds", "local_steps", "min_clients", "keep_checkpoints"):
        if not isinstance(fed[key], int) or isinstance(fed[key], bool) or fed[key] < 1:
            raise MeddiffError(f"{source}: federated.{key}={fed[key]!r} must be a positive integer")
    if fed["wait_clients"] is None:
        fed["wait_clients"] = fed["min_clients"]
    if not isinstance(fed["wait_clients"], int) or fed["wait_clients"] < fed["min_clients"]:
        raise MeddiffError(f"{source}: federated.wait_clients={fed['wait_clients']!r} must be an integer "
                           f">= federated.min_clients={fed['min_clients']}")
    if not (isinstance(fed["proximal_mu"], (int, float)) and fed["proximal_mu"] >= 0):
        raise MeddiffError(f"{source}: federated.proximal_mu={fed['proximal_mu']!r} must be a number >= 0")
    if fed["strategy"] == "fedavg" and fed["proximal_mu"]:
        raise MeddiffError(f"{source}: federated.proximal_mu={fed['proximal_mu']} is set but the strategy is "
                           "fedavg; set federated.strategy: fedprox or proximal_mu: 0")
    for key, low, high in (("server_learning_rate", 0.0, 10.0), ("server_momentum", 0.0, 1.0)):
        value = fed[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                (low < value <= high) if key == "server_learning_rate" else (low <= value < high)):
            raise MeddiffError(f"{source}: federated.{key}={value!r} must be a number in "
                               f"{'(0, 10]' if key == 'server_learning_rate' else '[0, 1)'}")
    if fed["strategy"] != "fedavgm" and (fed["server_learning_rate"] != 1.0 or fed["server_momentum"] != 0.0):
        raise MeddiffError(f"{source}: federated.server_learning_rate / server_momentum are set but the strategy is "
                           f"{fed['strategy']}; set federated.strategy: fedavgm")
    if fed["server_ema"] is not None and not 0 <= fed["server_ema"] < 1:
        raise MeddiffError(f"{source}: federated.server_ema={fed['server_ema']} must be null or in [0, 1)")
    for key in ("wait_timeout_s", "round_timeout_s", "connect_timeout_s"):
        if not isinstance(fed[key], (int, float)) or fed[key] <= 0:
            raise MeddiffError(f"{source}: federated.{key}={fed[key]!r} must be a positive number of seconds")
    parse_address(fed["address"], f"{source}: federated.address")
    dp = fed["dp"]
    if dp is not None:
        if not isinstance(dp, dict) or set(dp) != set(DP_KEYS) or not all(
                isinstance(dp[k], (int, float)) and dp[k] > 0 for k in DP_KEYS) or dp["delta"] >= 1:
            raise MeddiffError(f"{source}: federated.dp={dp!r} must be null or {{clip: C, epsilon: e, delta: d}} with "
                               "C, e > 0 and 0 < d < 1 (e.g. {clip: 1.0, epsilon: 1.0, delta: 1.0e-5})")
    training = resolve_config(config)
    if training["task"] != "synthesis":
        raise MeddiffError(f"{source}: federated training supports task: synthesis (got {training['task']!r})")
    if training["run"]["batch_size"] < MIN_SITE_BATCH:
        raise MeddiffError(f"{source}: run.batch_size={training['run']['batch_size']} must be >= {MIN_SITE_BATCH} for "
                           "federated training (a one-image update would leave the site); raise it")
    return training, fed


def site_batches(total: int, sizes: list[int]) -> list[int]:
    """Per-site batch sizes proportional to the sites' training-set sizes, summing to ``total`` (largest
    remainders), each at least MIN_SITE_BATCH. One local step at every site then sees as many images as one
    centralised step of ``total``, and the sample-weighted average of the site updates estimates the centralised
    minibatch update (FedSGD, McMahan et al. 2017, sec. 2); with equal batches the sequential steps of the global
    model are only 1/sites of a centralised run that sees the same number of images."""
    if not sizes or any(n < 1 for n in sizes):
        raise MeddiffError(f"site sizes {sizes} must be positive")
    if total < MIN_SITE_BATCH * len(sizes):
        raise MeddiffError(f"run.batch_size={total} is too small to share out proportionally among {len(sizes)} "
                           f"sites with at least {MIN_SITE_BATCH} images each; raise it to "
                           f">= {MIN_SITE_BATCH * len(sizes)} or use federated.site_batch: equal")
    share = [total * n / sum(sizes) for n in sizes]
    batches = [max(MIN_SITE_BATCH, int(s)) for s in share]
    order = sorted(range(len(sizes)), key=lambda i: share[i] - int(share[i]), reverse=True)
    while sum(batches) < total:  # hand out what rounding down left, largest remainder first
        for i in order:
            if sum(batches) < total:
                batches[i] += 1
    while sum(batches) > total:  # the MIN_SITE_BATCH floor overshot: take it back from the largest sites
        i = max((k for k in range(len(sizes)) if batches[k] > MIN_SITE_BATCH), key=lambda k: batches[k] - share[k])
        batches[i] -= 1
    return batches


def require_flwr():
    """The flwr module, or a one-line error naming the extra to install."""
    try:
        import flwr
    except ImportError:
        raise MeddiffError("meddiff federated needs Flower: pip install 'meddiff[federated]' (flwr==1.42.0)") from None
    return flwr


def load_federated_config(path: str | Path) -> tuple[dict, dict]:
    """(training config, federated section) from FED.yaml; errors name the file."""
    return split_config(load_config(path), str(path))


def parse_address(address: str, what: str = "--address") -> tuple[str, int]:
    """(host, port) of ``host:port``."""
    host, _, port = str(address).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MeddiffError(f"{what}={address!r} must be host:port, e.g. {LOOPBACK}:8088")
    return host, int(port)


def read_data_spec(spec: str, base: dict | None) -> dict:
    """A site's ``data:`` mapping from ``--data``: a YAML file holding a data mapping (or a whole config with a
    ``data:`` section), an inline YAML mapping ``"{kind: folder, path: ...}"``, or a path that replaces
    ``path`` in the config's own data section."""
    text = str(spec).strip()
    value: Any = None
    if text.startswith("{"):
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise MeddiffError(f"--data {spec!r} is not a valid YAML mapping: {error}") from None
    elif text.endswith((".yaml", ".yml")) and Path(text).is_file():
        value = yaml.safe_load(Path(text).read_text())
        if isinstance(value, dict) and isinstance(value.get("data"), dict):
            value = value["data"]
    if value is not None:
        if not isinstance(value, dict) or "kind" not in value:
            raise MeddiffError(f"--data {spec!r}: a data mapping needs a 'kind' key, as in a training config's data:")
        return value
    if not base:
        raise MeddiffError(f"--data {spec!r} is a path but the config has no data: section to put it in; "
                           "pass a mapping such as \"{kind: folder, path: DIR}\"")
    return {**base, "path": text}
