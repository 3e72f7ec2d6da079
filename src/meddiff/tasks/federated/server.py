"""The server: Flower's FedAvg, FedProx or FedAvgM, weighted by site sample counts, plus what a meddiff run needs.

After each aggregated round it writes the global model as a meddiff checkpoint, atomically
(``RUN_DIR/checkpoints/step_<round>/``: model.safetensors = the global weights, ema.safetensors = the server-side
EMA of them when ``federated.server_ema`` is set, else the global weights, so ``meddiff sample --checkpoint RUN_DIR``
loads it), and appends the round to ``RUN_DIR/log.jsonl``. Started again on the same RUN_DIR it resumes after the
last checkpointed round. A round waits up to ``wait_timeout_s`` for ``wait_clients`` sites, then trains with those
connected (at least ``min_clients``); a site that drops during the round is a failure, and the round is aggregated
from the others when at least ``min_clients`` returned.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from meddiff.errors import MeddiffError
from meddiff.files import write_text
from meddiff.training import EMA, list_checkpoints, load_state, read_meta, save_checkpoint, versions
from meddiff.training.config import dump_yaml

LOG = "log.jsonl"


def _strategy_class(name: str):
    from flwr.server.strategy import FedAvg, FedAvgM, FedProx

    base = {"fedavg": FedAvg, "fedprox": FedProx, "fedavgm": FedAvgM}[name]

    class MeddiffStrategy(base):
        """``base`` (Flower) with round checkpoints, server EMA, the round log and meddiff's client policy."""

        def __init__(self, *, run: "_ServerRun", **kwargs) -> None:
            super().__init__(**kwargs)
            self.run = run

        def configure_fit(self, server_round, parameters, client_manager):
            fed = self.run.fed
            client_manager.wait_for(fed["wait_clients"], timeout=int(fed["wait_timeout_s"]))
            if not client_manager.wait_for(fed["min_clients"], timeout=int(fed["wait_timeout_s"])):
                raise MeddiffError(f"round {self.run.offset + server_round}: fewer than federated.min_clients="
                                   f"{fed['min_clients']} sites connected within {fed['wait_timeout_s']} s")
            if name == "fedavgm" and self.initial_parameters is None:
                # FedAvgM steps from the previous global model; on a fresh run Flower took it from a client
                self.initial_parameters = parameters
            pairs = super().configure_fit(server_round, parameters, client_manager)
            clients = list(client_manager.all().values())  # every connected site trains
            fit_ins = pairs[0][1]
            fit_ins.config.update({"round": self.run.offset + server_round, "local_steps": fed["local_steps"]})
            self.run.begin_round(len(clients), parameters)
            return [(client, fit_ins) for client in clients]

        def aggregate_fit(self, server_round, results, failures):
            if len(results) < self.run.fed["min_clients"]:
                self.run.log_round(self.run.offset + server_round, results, failures, aggregated=False)
                return None, {}
            parameters, metrics = super().aggregate_fit(server_round, results, failures)
            if parameters is not None:
                self.run.finish_round(self.run.offset + server_round, parameters, results, failures)
            return parameters, metrics

    return MeddiffStrategy


class _ServerRun:
    """Run-directory state of the server: the network (from the sites' meta), the EMA, checkpoints, the log."""

    def __init__(self, config: dict, fed: dict, run_dir: Path) -> None:
        self.config, self.fed, self.run_dir = config, fed, run_dir
        self.net = self.ema = self.meta = None
        self.offset, self.ema_updates = 0, 0
        self.round_start, self.bytes_down = 0.0, 0
        checkpoints = list_checkpoints(run_dir / "checkpoints")
        if checkpoints:
            last = checkpoints[-1]
            self._build(read_meta(last))
            from meddiff.training import load_weights

            load_weights(self.net, last, "model")
            load_weights(self.ema.module, last, "ema")
            state = load_state(last)
            self.offset, self.ema_updates = int(state["round"]), int(state["ema_updates"])
        kept = []
        if (run_dir / LOG).is_file():  # on resume, rounds after the restored one are dropped
            kept = [line for line in (run_dir / LOG).read_text().splitlines()
                    if line.strip() and json.loads(line).get("round", 0) <= self.offset]
        write_text(run_dir / LOG, "".join(line + "\n" for line in kept))
        write_text(run_dir / "config.yaml", dump_yaml({**config, "federated": fed}))

    def _build(self, meta: dict) -> None:
        from meddiff.nets import build_network

        self.meta = meta
        self.net = build_network(meta["network"])
        self.ema = EMA(self.net, self.fed["server_ema"] or 0.0, warmup=False)

    def initial_parameters(self):
        """The last checkpoint's global weights on resume; None (Flower asks one site) on a new run."""
        from flwr.common import ndarrays_to_parameters

        if self.net is None:
            return None
        return ndarrays_to_parameters([v.detach().cpu().numpy() for v in self.net.state_dict().values()])

    def begin_round(self, clients: int, parameters) -> None:
        self.round_start = time.perf_counter()
        self.bytes_down = clients * sum(len(t) for t in parameters.tensors)

    def finish_round(self, round_: int, parameters, results, failures) -> None:
        from flwr.common import parameters_to_ndarrays

        if self.net is None:
            meta = json.loads(results[0][1].metrics["meta"])
            self._build(meta)
        arrays = parameters_to_ndarrays(parameters)
        state = self.net.state_dict()
        self.net.load_state_dict({k: torch.from_numpy(np.asarray(a)) for k, a in zip(state, arrays)})
        if self.fed["server_ema"] is not None and self.ema_updates > 0:
            self.ema_updates += 1  # ema_r = d ema_(r-1) + (1 - d) global_r
            self.ema.update(self.net, self.ema_updates)
        else:  # the first round (or no server EMA): ema = the global weights
            self.ema_updates += self.fed["server_ema"] is not None
            self.ema.module.load_state_dict(self.net.state_dict())
        meta = {**self.meta, "step": round_, "data": self.config.get("data"), "versions": versions(),
                "federated": {"round": round_, "strategy": self.fed["strategy"],
                              "sites": sorted(r.metrics.get("site", "?") for _, r in results)}}
        save_checkpoint(self.run_dir / "checkpoints", round_, self.net, self.ema.module,
                        {"round": round_, "ema_updates": self.ema_updates}, meta, keep=self.fed["keep_checkpoints"])
        self.log_round(round_, results, failures, aggregated=True)

    def log_round(self, round_: int, results, failures, *, aggregated: bool) -> None:
        examples = {r.metrics.get("site", "?"): int(r.num_examples) for _, r in results}
        total = sum(examples.values())
        loss = sum(r.metrics["loss"] * r.num_examples for _, r in results) / total if total else None
        record = {"round": round_, "aggregated": aggregated, "sites": sorted(examples), "num_examples": examples,
                  "failures": len(failures), "train_loss": loss,
                  "bytes_down": self.bytes_down, "bytes_up": sum(sum(len(t) for t in r.parameters.tensors)
                                                                  for _, r in results),
                  "round_s": time.perf_counter() - self.round_start}
        if self.fed["dp"] is not None:  # the weakest site guarantee so far (basic composition)
            record["dp_epsilon"] = max((r.metrics.get("dp_epsilon", 0.0) for _, r in results), default=None)
            record["dp_delta"] = max((r.metrics.get("dp_delta", 0.0) for _, r in results), default=None)
        with open(self.run_dir / LOG, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def _strategy_options(fed: dict) -> dict:
    """The strategy-specific keywords of the Flower strategy. FedAvgM's momentum buffer lives in the server process
    (Flower keeps it in memory): a resumed server starts it from zero again."""
    if fed["strategy"] == "fedprox":
        return {"proximal_mu": float(fed["proximal_mu"])}
    if fed["strategy"] == "fedavgm":
        return {"server_learning_rate": float(fed["server_learning_rate"]),
                "server_momentum": float(fed["server_momentum"])}
    return {}


def run_server(config: dict, fed: dict, run_dir: str | Path, *, address: str | None = None) -> dict:
    """Serve federated rounds until ``federated.rounds``; returns {"rounds_done", "resumed_from", "run_dir"}."""
    from meddiff.tasks.federated.config import require_flwr

    fl = require_flwr()

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = _ServerRun(config, fed, run_dir)
    resumed = state.offset
    todo = fed["rounds"] - state.offset
    if todo <= 0:
        return {"rounds_done": state.offset, "resumed_from": resumed, "run_dir": str(run_dir)}
    strategy = _strategy_class(fed["strategy"])(
        run=state, fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=fed["min_clients"],
        min_evaluate_clients=0, min_available_clients=fed["min_clients"], accept_failures=True,
        initial_parameters=state.initial_parameters(), fit_metrics_aggregation_fn=lambda metrics: {},
        **_strategy_options(fed))
    fl.server.start_server(server_address=address or fed["address"], strategy=strategy,
                           config=fl.server.ServerConfig(num_rounds=todo, round_timeout=fed["round_timeout_s"]))
    done = list_checkpoints(run_dir / "checkpoints")
    rounds_done = int(load_state(done[-1])["round"]) if done else 0
    return {"rounds_done": rounds_done, "resumed_from": resumed, "run_dir": str(run_dir)}
