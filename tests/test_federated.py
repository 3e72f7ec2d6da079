"""meddiff federated (issue 30): config checks, the split by subject, what leaves a site, FedProx's proximal step,
and a 2-site 2-round Flower simulation on 127.0.0.1 whose global checkpoint loads like any meddiff checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("flwr")

from meddiff.errors import MeddiffError  # noqa: E402
from meddiff.tasks.federated import (  # noqa: E402
    METRIC_KEYS,
    SiteTrainer,
    assign_subjects,
    dataset_subjects,
    read_data_spec,
    simulate,
    site_batches,
    split_config,
    write_site_specs,
)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "federated_tiny.yaml"


def tiny(tmp_path: Path, **federated) -> tuple[Path, dict]:
    """configs/federated_tiny.yaml with the run under tmp_path and ``federated`` overrides; (path, mapping)."""
    config = yaml.safe_load(TINY.read_text())
    config["run"].update({"out_dir": str(tmp_path / "runs")})
    config["federated"].update(federated)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "fed.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, config


def test_config_checks_name_the_key(tmp_path):
    _, config = tiny(tmp_path)
    training, fed = split_config(config)
    assert fed["strategy"] == "fedavg" and fed["wait_clients"] == fed["min_clients"] == 1
    assert "federated" not in training and training["run"]["batch_size"] == 4
    bad = [({"strategy": "fedsgd"}, "federated.strategy"), ({"proximal_mu": 0.1}, "proximal_mu"),
           ({"rounds": 0}, "federated.rounds"), ({"colour": 1}, "colour"), ({"address": "nowhere"}, "address"),
           ({"wait_clients": 0, "min_clients": 2}, "wait_clients")]
    for override, needle in bad:
        with pytest.raises(MeddiffError, match=needle):
            split_config({**config, "federated": {**config["federated"], **override}})
    with pytest.raises(MeddiffError, match="batch_size"):  # a one-image update must never leave a site
        split_config({**config, "run": {**config["run"], "batch_size": 1}})
    with pytest.raises(MeddiffError, match="federated"):
        split_config({k: v for k, v in config.items() if k != "federated"})


def test_data_spec_forms(tmp_path):
    base = {"kind": "folder", "path": "a", "size": 32}
    assert read_data_spec("/data/site_b", base) == {**base, "path": "/data/site_b"}
    assert read_data_spec("{kind: medmnist, path: x.npz}", base) == {"kind": "medmnist", "path": "x.npz"}
    spec = tmp_path / "site.yaml"
    spec.write_text(yaml.safe_dump({"data": {"kind": "folder", "path": "b"}}))
    assert read_data_spec(str(spec), base) == {"kind": "folder", "path": "b"}
    with pytest.raises(MeddiffError, match="--data"):
        read_data_spec("{path: x}", base)


def test_sites_are_split_by_subject(tmp_path):
    groups = assign_subjects([f"s{i // 3}" for i in range(30)], 3, weights=[3, 2, 1])
    assert sorted(sum(groups, [])) == sorted({f"s{i}" for i in range(10)})  # each subject once, whole
    assert [len(g) for g in groups] == sorted((len(g) for g in groups), reverse=True) and len(groups[0]) > len(groups[2])
    with pytest.raises(MeddiffError, match="--sites"):
        assign_subjects(["a", "b"], 3)
    _, config = tiny(tmp_path)
    specs = write_site_specs(config["data"], tmp_path / "sites", 2)
    from meddiff.data import build_dataset

    held_out = set(dataset_subjects(build_dataset(config["data"], split="val")))
    seen = []
    for spec in specs.values():
        data = yaml.safe_load(spec.read_text())["data"]
        subjects = set(dataset_subjects(build_dataset(data, split="train")))
        assert subjects and not subjects & held_out
        seen.append(subjects)
    assert not seen[0] & seen[1]  # no subject at two sites


def _site(tmp_path, **federated):
    from meddiff.data import build_dataset

    _, config = tiny(tmp_path, **federated)
    training, fed = split_config(config)
    return SiteTrainer(training, fed, "a", build_dataset(training["data"], split="train"), tmp_path / "site_a")


def test_only_weights_and_scalars_leave_a_site(tmp_path):
    site = _site(tmp_path)
    state = site.trainer.net.state_dict()
    start = site.weights()
    arrays, count, metrics = site.fit(start, local_steps=2)
    # the payload is exactly the network's state (one array per entry, same shapes), nothing else
    assert len(arrays) == len(state) and all(a.shape == tuple(v.shape) for a, v in zip(arrays, state.values()))
    image_shape = tuple(site.trainer.dataset[0]["image"].shape)
    images = [site.trainer.dataset[i]["image"].numpy() for i in range(len(site.trainer.dataset))]
    assert not any(a.size == x.size and np.allclose(a.ravel(), x.ravel(), atol=1e-3) for a in arrays for x in images)
    assert all(a.shape != image_shape for a in arrays)
    assert set(metrics) == set(METRIC_KEYS) and all(isinstance(v, (int, float, str)) for v in metrics.values())
    meta = json.loads(metrics["meta"])
    assert "data" not in meta and "versions" not in meta  # no site paths leave either
    assert count == len(site.trainer.dataset) and metrics["steps"] == 2
    # each local step averaged a batch of >= 2 images (the config refuses batch_size 1)
    assert site.trainer.config["run"]["batch_size"] >= 2
    assert any(not np.array_equal(a, b) for a, b in zip(arrays, start))
    assert site.trainer.step == 2 and site.trainer.run_dir == tmp_path / "site_a"


def test_fedprox_step_pulls_towards_the_global_weights(tmp_path):
    free = _site(tmp_path / "free")
    start = free.weights()
    moved_free, _, _ = free.fit(start, local_steps=3)
    prox = _site(tmp_path / "prox", strategy="fedprox", proximal_mu=1.0)
    moved_prox, _, _ = prox.fit(start, local_steps=3, proximal_mu=1e4)
    dist = lambda arrays: sum(float(((a - b) ** 2).sum()) for a, b in zip(arrays, start))  # noqa: E731
    assert dist(moved_prox) < 0.2 * dist(moved_free)


def test_site_batches_share_the_batch_by_site_size():
    """Proportional site batches sum to the centralised batch, follow the site sizes (largest remainders), and
    never fall below 2 images (no one-image update leaves a site); too small a batch is a one-line error."""
    assert site_batches(16, [6759, 4465, 2321]) == [8, 5, 3]  # shares 7.99 / 5.28 / 2.74
    assert site_batches(10, [1, 1]) == [5, 5]
    assert site_batches(8, [100, 1, 1]) == [4, 2, 2]  # the floor of 2 is taken from the largest site
    for total, sizes in ((17, [5, 7, 11]), (9, [3, 1, 1, 1]), (64, [1000, 10, 300])):
        batches = site_batches(total, sizes)
        assert sum(batches) == total and min(batches) >= 2
        by_size = [batches[i] for i in sorted(range(len(sizes)), key=sizes.__getitem__)]
        assert by_size == sorted(by_size)  # a larger site never gets a smaller batch
    with pytest.raises(MeddiffError, match="too small to share out"):
        site_batches(5, [1, 1, 1])
    with pytest.raises(MeddiffError, match="site_batch"):
        split_config({**yaml.safe_load(TINY.read_text()), "federated": {"site_batch": "by_size"}})


@pytest.mark.parametrize("strategy", ["fedavg", "fedavgm"])
def test_simulate_two_sites_two_rounds(tmp_path, strategy):
    """The default-run federated test: server + 2 clients as processes on 127.0.0.1, 2 rounds (FedAvgM: its
    server step needs the first global model, which Flower takes from a client on a fresh run). The FedAvg run
    shares a batch of 5 between the unequal sites (federated.site_batch: proportional)."""
    options = {"server_momentum": 0.5} if strategy == "fedavgm" else {"site_batch": "proportional"}
    path, config = tiny(tmp_path, local_steps=3, strategy=strategy, **options)
    if strategy == "fedavg":
        config["run"]["batch_size"] = 5
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    training, fed = split_config(config)
    run_dir = tmp_path / "run"
    result = simulate(path, training, fed, 2, run_dir, timeout_s=240)
    rounds = result["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["aggregated"] and r["failures"] == 0 for r in rounds)
    assert all(r["sites"] == ["site1", "site2"] and r["bytes_up"] > 0 for r in rounds)
    assert rounds[0]["num_examples"]["site1"] != rounds[0]["num_examples"]["site2"]  # unequal sites (by subject)
    assert result["client_exit_codes"] == [0, 0]
    from meddiff.training import load_checkpoint, load_state, resolve_checkpoint

    assert resolve_checkpoint(run_dir).name == "step_00000002" and load_state(run_dir)["round"] == 2
    model, meta = load_checkpoint(run_dir)  # what `meddiff sample --checkpoint RUN_DIR` loads
    assert meta["federated"]["sites"] == ["site1", "site2"] and meta["image_size"] == [32, 32]
    with torch.no_grad():
        out = model(torch.zeros(2, 1, 32, 32), torch.tensor([10, 500]))
    assert out.shape == (2, 1, 32, 32) and torch.isfinite(out).all()
    for site in ("site1", "site2"):  # each site trained 2 x 3 steps with meddiff's Trainer
        assert load_state(run_dir / "sites" / site)["step"] == 6
    if strategy == "fedavg":  # the larger site takes the larger share of the batch of 5
        examples = rounds[0]["num_examples"]
        big, small = sorted(examples, key=examples.get, reverse=True)
        assert result["site_batches"] == {big: 3, small: 2}
        for site, batch in result["site_batches"].items():
            saved = yaml.safe_load((run_dir / "sites" / site / "config.yaml").read_text())
            assert saved["run"]["batch_size"] == batch


def test_server_checkpoint_and_ema_over_rounds(tmp_path):
    """Round checkpoints: model = the aggregated weights, ema = d ema + (1 - d) global (server_ema d), resumable."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    from meddiff.tasks.federated.server import _ServerRun
    from meddiff.training import load_checkpoint

    site = _site(tmp_path / "site")
    base = site.weights()
    _, config = tiny(tmp_path, server_ema=0.5)
    training, fed = split_config(config)
    run = _ServerRun(training, fed, tmp_path / "server")
    meta = json.dumps(site.meta())
    for round_, shift in ((1, 1.0), (2, 3.0)):
        arrays = [a + shift if a.dtype.kind == "f" else a for a in base]
        result = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), 5, {"loss": 0.1, "site": "a", "meta": meta})
        run.begin_round(1, ndarrays_to_parameters(arrays))
        run.finish_round(round_, ndarrays_to_parameters(arrays), [(None, result)], [])
    model, _ = load_checkpoint(tmp_path / "server", which="model")
    ema, meta2 = load_checkpoint(tmp_path / "server", which="ema")
    name, w0 = next((k, v) for k, v in zip(site.keys, base) if v.dtype.kind == "f")
    assert np.allclose(model.state_dict()[name].numpy(), w0 + 3.0, atol=1e-6)
    assert np.allclose(ema.state_dict()[name].numpy(), w0 + 2.0, atol=1e-5)  # 0.5 (w0 + 1) + 0.5 (w0 + 3)
    assert meta2["federated"]["round"] == 2 and meta2["step"] == 2
    again = _ServerRun(training, fed, tmp_path / "server")  # resumes after round 2 with the EMA count restored
    assert again.offset == 2 and again.ema_updates == 2
    assert [json.loads(x)["round"] for x in (tmp_path / "server" / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_local_dp_clips_the_update_and_reports_epsilon(tmp_path):
    from meddiff.tasks.federated.client import DP_METRIC_KEYS

    with pytest.raises(MeddiffError, match="federated.dp"):
        _site(tmp_path / "bad", dp={"clip": 1.0, "epsilon": 1.0})
    clip = 1e-3
    site = _site(tmp_path / "site", dp={"clip": clip, "epsilon": 1e9, "delta": 1e-5})  # ~no noise: see the clip
    start = site.weights()
    arrays, _, metrics = site.fit(start, local_steps=2)
    norm = np.sqrt(sum(float(((a.astype(np.float64) - b) ** 2).sum()) for a, b in zip(arrays, start)))
    assert clip * 0.5 < norm <= clip * 1.001
    assert set(metrics) == set(METRIC_KEYS) | set(DP_METRIC_KEYS) and metrics["dp_rounds"] == 1
    noisy = _site(tmp_path / "noisy", dp={"clip": clip, "epsilon": 0.5, "delta": 1e-5})
    arrays, _, metrics = noisy.fit(start, local_steps=2)
    delta = np.concatenate([(a.astype(np.float64) - b).ravel() for a, b in zip(arrays, start) if a.dtype.kind == "f"])
    expected = clip * np.sqrt(2 * np.log(1.25 / 1e-5)) / 0.5  # the Gaussian mechanism's std per weight
    assert abs(delta.std() / expected - 1) < 0.05 and metrics["dp_epsilon"] == 0.5


def test_fedavgm_server_momentum_matches_the_hand_update(tmp_path):
    """FedAvgM (Hsu et al. 2019) through meddiff's strategy: m_r = beta m_{r-1} + (g_{r-1} - avg_r),
    g_r = g_{r-1} - lr m_r; round checkpoints hold g_r. Two sites of 1 and 3 examples (weighted average)."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    from meddiff.tasks.federated.server import _ServerRun, _strategy_class, _strategy_options
    from meddiff.training import load_checkpoint

    site = _site(tmp_path / "site")
    base = site.weights()
    _, config = tiny(tmp_path, strategy="fedavgm", server_learning_rate=1.5, server_momentum=0.5)
    training, fed = split_config(config)
    run = _ServerRun(training, fed, tmp_path / "server")
    strategy = _strategy_class("fedavgm")(run=run, initial_parameters=ndarrays_to_parameters(base),
                                          min_fit_clients=1, min_available_clients=1, **_strategy_options(fed))
    meta = json.dumps(site.meta())
    name, w0 = next((k, v) for k, v in zip(site.keys, base) if v.dtype.kind == "f")
    g, m = w0.astype(np.float64), None
    for round_, (shift_a, shift_b) in ((1, (1.0, 5.0)), (2, (2.0, -2.0))):
        results = []
        for shift, n in ((shift_a, 1), (shift_b, 3)):
            arrays = [a + shift if a.dtype.kind == "f" else a for a in base]
            results.append((None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n,
                                         {"loss": 0.1, "site": f"s{n}", "meta": meta})))
        run.begin_round(2, strategy.initial_parameters)
        strategy.aggregate_fit(round_, results, [])
        avg = w0 + (shift_a * 1 + shift_b * 3) / 4
        pseudo = g - avg
        m = pseudo if m is None else 0.5 * m + pseudo
        g = g - 1.5 * m
    model, _ = load_checkpoint(tmp_path / "server", which="model")
    np.testing.assert_allclose(model.state_dict()[name].numpy(), g, atol=1e-5)
    assert not np.allclose(g, w0 + (2.0 * 1 - 2.0 * 3) / 4)  # not the plain FedAvg average
    for override, needle in (({"server_momentum": 1.0}, "server_momentum"),
                             ({"server_learning_rate": 0}, "server_learning_rate"),
                             ({"strategy": "fedavg", "server_momentum": 0.9}, "fedavgm")):
        with pytest.raises(MeddiffError, match=needle):
            split_config({**config, "federated": {**config["federated"], **override}})
