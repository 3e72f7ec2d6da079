"""meddiff federated faults (issue 30): a site killed mid-round does not stop the round, the same site restarted
rejoins (and resumes its local Trainer state), and a server started again on its run directory resumes after the
last checkpointed round. Real processes on 127.0.0.1 (about a minute or two on 2 CPU cores)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("flwr")

from meddiff.tasks.federated import free_port, split_config  # noqa: E402
from meddiff.tasks.federated.server import LOG, _ServerRun  # noqa: E402
from meddiff.tasks.federated.simulate import _environment, launch_client, launch_server, prepare_sites  # noqa: E402
from meddiff.training import list_checkpoints, load_state  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LOCAL_STEPS = 25


def _wait(condition, timeout: float, what: str, processes=()) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        for p in processes:
            if p.poll() is not None and p.returncode != 0:
                raise AssertionError(f"{what}: a process exited with {p.returncode}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _rounds(run_dir: Path) -> list[dict]:
    log = run_dir / LOG
    return [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.is_file() else []


@pytest.mark.slow
def test_dropped_site_rejoins_and_server_resumes(tmp_path):
    config = yaml.safe_load((REPO / "configs" / "federated_tiny.yaml").read_text())
    config["federated"].update({"local_steps": LOCAL_STEPS, "rounds": 2, "wait_clients": 2, "wait_timeout_s": 90})
    path = tmp_path / "fed.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    training, fed = split_config(config)
    run_dir = tmp_path / "run"
    specs = prepare_sites(training, run_dir, 2)
    env = _environment(2)
    address = f"127.0.0.1:{free_port()}"
    server = launch_server(path, run_dir, address, 2, env=env)
    one = launch_client(path, run_dir, "site1", specs["site1"], address, env=env)
    two = launch_client(path, run_dir, "site2", specs["site2"], address, env=env)
    processes = [server, one, two]
    try:
        # site2 checkpoints the global weights when its round-1 training starts: kill it then, mid-round
        started = run_dir / "sites" / "site2" / "checkpoints" / "step_00000000"
        _wait(started.is_dir, 240, "site2 to start round 1", processes)
        two.send_signal(signal.SIGKILL)
        two.wait()
        assert not (run_dir / "sites" / "site2" / "checkpoints" / f"step_{LOCAL_STEPS:08d}").exists()
        _wait(lambda: len(_rounds(run_dir)) >= 1, 240, "round 1 to complete without site2", [server, one])
        first = _rounds(run_dir)[0]
        assert first["aggregated"] and first["sites"] == ["site1"] and first["failures"] == 1
        assert load_state(run_dir)["round"] == 1  # the global model of round 1 is checkpointed

        # the same site restarted rejoins: round 2 waits for 2 sites
        two = launch_client(path, run_dir, "site2", specs["site2"], address, env=env)
        processes = [server, one, two]
        assert server.wait(timeout=240) == 0
        second = _rounds(run_dir)[1]
        assert second["aggregated"] and second["sites"] == ["site1", "site2"] and second["failures"] == 0
        assert one.wait(timeout=60) == 0 and two.wait(timeout=60) == 0
        assert load_state(run_dir / "sites" / "site1")["step"] == 2 * LOCAL_STEPS
        assert load_state(run_dir / "sites" / "site2")["step"] == LOCAL_STEPS  # resumed from its round-1 save

        # the server started again on RUN_DIR resumes after round 2 with the round-2 global weights
        from safetensors.numpy import load_file

        resumed = _ServerRun(training, {**fed, "rounds": 3}, run_dir)
        assert resumed.offset == 2
        saved = load_file(str(list_checkpoints(run_dir / "checkpoints")[-1] / "model.safetensors"))
        from flwr.common import parameters_to_ndarrays

        initial = parameters_to_ndarrays(resumed.initial_parameters())
        keys = list(resumed.net.state_dict())  # state_dict order (safetensors files list keys sorted)
        assert len(initial) == len(saved) and all(np.array_equal(a, saved[k]) for a, k in zip(initial, keys))
        address = f"127.0.0.1:{free_port()}"
        server = launch_server(path, run_dir, address, 2, rounds=3, env=env)
        one = launch_client(path, run_dir, "site1", specs["site1"], address, rounds=3, env=env)
        two = launch_client(path, run_dir, "site2", specs["site2"], address, rounds=3, env=env)
        processes = [server, one, two]
        assert server.wait(timeout=240) == 0
        assert [r["round"] for r in _rounds(run_dir)] == [1, 2, 3]
        assert load_state(run_dir)["round"] == 3 and load_state(run_dir / "sites" / "site1")["step"] == 3 * LOCAL_STEPS
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
