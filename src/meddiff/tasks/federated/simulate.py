"""A one-machine trial: the server and N site clients as separate local processes talking gRPC over 127.0.0.1,
the config's training subjects shared out among the sites by subject."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from meddiff.errors import MeddiffError
from meddiff.tasks.federated.config import LOOPBACK
from meddiff.tasks.federated.server import LOG
from meddiff.tasks.federated.sites import write_site_specs


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound, read and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "meddiff.cli.main", "federated", *args]


def _environment(processes: int) -> dict:
    env = dict(os.environ)
    threads = max(1, (os.cpu_count() or 1) // max(1, processes))
    env.setdefault("OMP_NUM_THREADS", str(threads))  # N trainers share the machine's cores
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def launch_server(config_path, run_dir: Path, address: str, wait_clients: int, *, rounds: int | None = None,
                  env: dict | None = None) -> subprocess.Popen:
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    args = ["server", "--config", str(config_path), "--out", str(run_dir), "--address", address,
            "--wait-clients", str(wait_clients)] + (["--rounds", str(rounds)] if rounds else [])
    with open(logs / "server.log", "a") as log:
        return subprocess.Popen(_command(*args), stdout=log, stderr=subprocess.STDOUT, env=env)


def launch_client(config_path, run_dir: Path, site: str, data: Path, address: str, *,
                  rounds: int | None = None, batch_size: int | None = None, env: dict | None = None) -> subprocess.Popen:
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    args = ["client", "--config", str(config_path), "--site", site, "--data", str(data), "--address", address,
            "--out", str(run_dir / "sites" / site)] + (["--rounds", str(rounds)] if rounds else []) + (
            ["--batch-size", str(batch_size)] if batch_size else [])
    with open(logs / f"{site}.log", "a") as log:
        return subprocess.Popen(_command(*args), stdout=log, stderr=subprocess.STDOUT, env=env)


def prepare_sites(config: dict, run_dir: Path, sites: int) -> dict[str, Path]:
    """Per-site data specs (``RUN_DIR/sites/<site>/data.yaml``), reused when the run is simulated again."""
    names = [f"site{i + 1}" for i in range(sites)]
    existing = {n: run_dir / "sites" / n / "data.yaml" for n in names}
    if all(p.is_file() for p in existing.values()):
        return existing
    if not config.get("data"):
        raise MeddiffError("simulate needs the config's data: section to share out among the sites")
    return write_site_specs(config["data"], run_dir / "sites", sites, seed=config["run"]["seed"], names=names)


def simulate(config_path: str | Path, config: dict, fed: dict, sites: int, run_dir: str | Path, *,
             timeout_s: float | None = None) -> dict:
    """Run server + ``sites`` clients to the end; returns {"rounds": [round records], "run_dir", "wall_s"}."""
    from meddiff.tasks.federated.config import require_flwr

    require_flwr()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    specs = prepare_sites(config, run_dir, sites)
    batches = dict.fromkeys(specs)
    if fed["site_batch"] == "proportional":
        batches = dict(zip(specs, proportional_batches(config, specs)))
    address = f"{LOOPBACK}:{free_port()}"
    env = _environment(sites)
    start = time.perf_counter()
    server = launch_server(config_path, run_dir, address, sites, rounds=fed["rounds"], env=env)
    clients = [launch_client(config_path, run_dir, site, spec, address, rounds=fed["rounds"],
                             batch_size=batches[site], env=env) for site, spec in specs.items()]
    try:
        code = server.wait(timeout=timeout_s)
        for client in clients:
            try:
                client.wait(timeout=60)
            except subprocess.TimeoutExpired:
                client.terminate()
    finally:
        for process in [server, *clients]:
            if process.poll() is None:
                process.kill()
                process.wait()
    if code != 0:
        tail = (run_dir / "logs" / "server.log").read_text().splitlines()[-15:]
        raise MeddiffError(f"the federated server exited with code {code}; see {run_dir / 'logs'}:\n" + "\n".join(tail))
    records = [json.loads(line) for line in (run_dir / LOG).read_text().splitlines() if line.strip()]
    return {"rounds": records, "run_dir": str(run_dir), "wall_s": time.perf_counter() - start,
            "client_exit_codes": [c.returncode for c in clients], "site_batches": batches}


def proportional_batches(config: dict, specs: dict[str, Path]) -> list[int]:
    """run.batch_size shared out among the sites in proportion to their training items (``site_batches``)."""
    from meddiff.data import build_dataset
    from meddiff.tasks.federated.config import read_data_spec, site_batches

    sizes = [len(build_dataset(read_data_spec(str(spec), config.get("data")), split="train")) for spec in specs.values()]
    return site_batches(config["run"]["batch_size"], sizes)
