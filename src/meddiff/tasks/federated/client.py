"""A site: meddiff's Trainer behind a Flower client. Only network weights and a few scalars leave the site.

Each round the site loads the global weights into its Trainer, checkpoints (so its optimiser state, RNG and
step survive a crash and a restarted client with the same site name carries on), trains ``local_steps``
optimiser steps with the Trainer's own loss, schedule, EMA and checkpoints, and returns its network weights,
its sample count (the aggregation weight) and scalar metrics (mean loss, steps, site name, network meta).
"""

from __future__ import annotations

import copy
import json
import zlib
from pathlib import Path

import numpy as np
import torch

from meddiff.errors import MeddiffError
from meddiff.training import Trainer, list_checkpoints, load_state

# What a site sends back with its weights: scalars only (no image, no per-image gradient).
METRIC_KEYS = ("loss", "steps", "site", "meta")
DP_METRIC_KEYS = ("dp_epsilon", "dp_delta", "dp_rounds")


def site_seed(seed: int, site: str) -> int:
    """Per-site seed for data order and noise draws (the same network initialisation comes from the server)."""
    return seed + zlib.crc32(site.encode()) % 1_000_000


class SiteTrainer:
    """The local half of federated training: ``fit(global_weights, local_steps, mu) -> (weights, n, metrics)``."""

    def __init__(self, config: dict, fed: dict, site: str, dataset, run_dir: str | Path) -> None:
        if not site or any(c in site for c in "/\\") or site.startswith("."):
            raise MeddiffError(f"--site {site!r} must be a plain name (letters, digits, - or _)")
        config = copy.deepcopy(config)
        run = config["run"]
        run.update({"name": site, "progress": False, "sample_every": 0,
                    "steps": fed["rounds"] * fed["local_steps"], "seed": site_seed(run["seed"], site),
                    "checkpoint_every": 10**9})  # the Trainer saves at the end of each round's fit
        self.site, self.fed = site, fed
        self.trainer = Trainer(config, dataset, run_dir=run_dir)
        self.keys = list(self.trainer.net.state_dict().keys())
        checkpoints = list_checkpoints(self.trainer.run_dir / "checkpoints")
        if checkpoints:  # a restarted site: restore optimiser, RNG and step from its last local checkpoint
            self._fit_to(int(load_state(checkpoints[-1])["step"]))

    def _fit_to(self, steps: int, on_step=None) -> list[tuple[int, float]]:
        self.trainer.config["run"]["steps"] = steps
        return self.trainer.fit(resume=True, on_step=on_step)

    def weights(self) -> list[np.ndarray]:
        return [v.detach().cpu().numpy().copy() for v in self.trainer.net.state_dict().values()]

    def set_weights(self, arrays: list[np.ndarray]) -> None:
        if len(arrays) != len(self.keys):
            raise MeddiffError(f"site {self.site}: the server sent {len(arrays)} arrays for a network with "
                               f"{len(self.keys)}; server and sites must use the same config")
        state = {k: torch.from_numpy(np.asarray(a)) for k, a in zip(self.keys, arrays)}
        self.trainer.net.load_state_dict(state)

    def meta(self) -> dict:
        """Network meta for the server's checkpoint, without this site's data paths or versions."""
        meta = self.trainer.meta()
        meta.pop("data", None)
        meta.pop("versions", None)
        return meta

    def fit(self, arrays: list[np.ndarray], local_steps: int, proximal_mu: float = 0.0
            ) -> tuple[list[np.ndarray], int, dict]:
        self.set_weights(arrays)
        self.trainer.save()  # the global weights with this site's optimiser state: what fit(resume=True) restores
        on_step = None
        if proximal_mu > 0:
            anchor = [p.detach().clone() for p in self.trainer.net.parameters()]
            on_step = _ProximalStep(self.trainer, anchor, proximal_mu)
        history = self._fit_to(self.trainer.step + local_steps, on_step)
        losses = [loss for _, loss in history]
        metrics = {"loss": float(np.mean(losses)) if losses else float("nan"), "steps": len(history),
                   "site": self.site, "meta": json.dumps(self.meta(), default=str)}
        weights = self.weights()
        if self.fed["dp"] is not None:
            weights = self._privatise(weights, arrays, metrics)
        return weights, len(self.trainer.dataset), metrics

    def _privatise(self, weights: list[np.ndarray], start: list[np.ndarray], metrics: dict) -> list[np.ndarray]:
        """Local differential privacy with Flower's mechanism (as its LocalDpMod): the update w - w_global is clipped
        to L2 norm C (FlatClip) and Gaussian noise of std C sqrt(2 ln(1.25 / delta)) / epsilon is added to every
        weight (the Gaussian mechanism with sensitivity C, Dwork & Roth 2014, thm. A.1; epsilon < 1 for that bound).
        The unit protected is the site's whole contribution to a round; over r rounds the site's guarantee is
        (r epsilon, r delta) by basic composition, which is what is reported."""
        from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, compute_clip_model_update

        dp = self.fed["dp"]
        floats = [i for i, a in enumerate(weights) if a.dtype.kind == "f"]
        local = [weights[i].astype(np.float64) for i in floats]
        compute_clip_model_update(local, [np.asarray(start[i], np.float64) for i in floats], dp["clip"])
        add_gaussian_noise_inplace(local, dp["clip"] * float(np.sqrt(2 * np.log(1.25 / dp["delta"]))) / dp["epsilon"])
        out = list(weights)
        for i, a in zip(floats, local):
            out[i] = a.astype(weights[i].dtype)
        rounds = max(1, self.trainer.step // self.fed["local_steps"])  # rounds this site has taken part in
        metrics.update({"dp_epsilon": rounds * dp["epsilon"], "dp_delta": rounds * dp["delta"], "dp_rounds": rounds})
        return out


class _ProximalStep:
    """FedProx's proximal term mu/2 ||w - w_global||^2 (Li et al. 2020, eq. 2) as a decoupled proximal step after
    each optimiser step: w <- (w + lr mu w_global) / (1 + lr mu), the exact proximal operator of lr * that term
    (decoupled from Adam's scaling, as AdamW decouples weight decay)."""

    def __init__(self, trainer: Trainer, anchor: list[torch.Tensor], mu: float) -> None:
        self.trainer, self.anchor, self.mu = trainer, anchor, mu

    @torch.no_grad()
    def __call__(self, step: int, loss: float) -> None:
        lr = self.trainer.optimizer.param_groups[0]["lr"]
        params = list(self.trainer.net.parameters())
        torch._foreach_add_(params, self.anchor, alpha=lr * self.mu)
        torch._foreach_div_(params, 1 + lr * self.mu)


def make_flower_client(site: SiteTrainer):
    """The Flower NumPyClient wrapping a SiteTrainer."""
    import flwr as fl

    class MeddiffClient(fl.client.NumPyClient):
        def get_parameters(self, config):
            return site.weights()

        def fit(self, parameters, config):
            return site.fit(parameters, int(config["local_steps"]), float(config.get("proximal_mu", 0.0)))

    return MeddiffClient()


def run_client(config: dict, fed: dict, site: str, data: dict, *, address: str | None = None,
               out: str | Path | None = None, batch_size: int | None = None) -> Path:
    """Train at one site until the server finishes; returns the site's local run directory. ``batch_size``
    overrides run.batch_size at this site (a local choice, e.g. its share under federated.site_batch)."""
    from meddiff.tasks.federated.config import MIN_SITE_BATCH, require_flwr

    fl = require_flwr()

    from meddiff.data import build_dataset

    config = copy.deepcopy(config)
    config["data"] = data
    if batch_size is not None:
        if batch_size < MIN_SITE_BATCH:
            raise MeddiffError(f"--batch-size {batch_size}: a site's batch must be >= {MIN_SITE_BATCH} (a one-image "
                               "update would leave the site)")
        config["run"]["batch_size"] = int(batch_size)
    dataset = build_dataset(data, split="train")
    run_dir = Path(out) if out is not None else Path(config["run"]["out_dir"]) / f"{config['run']['name']}-{site}"
    trainer = SiteTrainer(config, fed, site, dataset, run_dir)
    fl.client.start_client(server_address=address or fed["address"],
                           client=make_flower_client(trainer).to_client(),
                           max_wait_time=float(fed["connect_timeout_s"]))
    return trainer.trainer.run_dir
