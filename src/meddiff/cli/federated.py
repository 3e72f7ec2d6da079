"""`meddiff federated server|client|simulate`: train one diffusion model across sites with Flower."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "federated", help="federated training across sites (Flower): server, client, or a local simulation",
        description="Federated training of a meddiff config across sites with Flower (FedAvg/FedProx). The config is "
                    "a `meddiff train` config plus a `federated:` section (see configs/federated_tiny.yaml). Only "
                    "network weights and scalar metrics leave a site. Needs: pip install 'meddiff[federated]'.")
    sub = parser.add_subparsers(dest="federated_command", metavar="ROLE", required=True)

    server = sub.add_parser("server", help="run the aggregation server (checkpoints the global model each round)")
    server.add_argument("--config", required=True, help="federated YAML config")
    server.add_argument("--out", help="run directory (default: <run.out_dir>/<run.name>); resumed when it has rounds")
    server.add_argument("--address", help="host:port to listen on (default: federated.address)")
    server.add_argument("--rounds", type=int, help="total rounds (overrides federated.rounds)")
    server.add_argument("--wait-clients", type=int, help="sites each round waits for (overrides federated.wait_clients)")
    server.set_defaults(func=run_server)

    client = sub.add_parser("client", help="train at one site and exchange weights with the server")
    client.add_argument("--config", required=True, help="federated YAML config (the same as the server's)")
    client.add_argument("--site", required=True, help="site name; a client restarted with the same name resumes")
    client.add_argument("--data", required=True,
                        help="this site's data: a YAML file with a data: mapping, an inline mapping "
                             "\"{kind: folder, path: DIR}\", or a path replacing data.path of the config")
    client.add_argument("--address", help="server host:port (default: federated.address)")
    client.add_argument("--out", help="the site's local run directory (default: <run.out_dir>/<run.name>-<site>)")
    client.add_argument("--rounds", type=int, help="total rounds (overrides federated.rounds; sets the LR schedule)")
    client.add_argument("--batch-size", type=int, help="this site's batch per local step (overrides run.batch_size; "
                        ">= 2)")
    client.set_defaults(func=run_client)

    simulate = sub.add_parser("simulate", help="server + N clients as local processes on 127.0.0.1")
    simulate.add_argument("--config", required=True, help="federated YAML config")
    simulate.add_argument("--sites", type=int, required=True, help="number of sites (the data is split by subject)")
    simulate.add_argument("--out", help="run directory (default: <run.out_dir>/<run.name>)")
    simulate.add_argument("--rounds", type=int, help="total rounds (overrides federated.rounds)")
    simulate.set_defaults(func=run_simulate)


def _load(args):
    from pathlib import Path

    from meddiff.tasks.federated import load_federated_config

    config, fed = load_federated_config(args.config)
    if getattr(args, "rounds", None) is not None:
        fed["rounds"] = args.rounds
    if getattr(args, "wait_clients", None) is not None:
        fed["wait_clients"] = max(args.wait_clients, fed["min_clients"])
    out = getattr(args, "out", None)
    run_dir = Path(out) if out else Path(config["run"]["out_dir"]) / config["run"]["name"]
    return config, fed, run_dir


def run_server(args: argparse.Namespace) -> int:
    from meddiff.tasks.federated import run_server as serve

    config, fed, run_dir = _load(args)
    result = serve(config, fed, run_dir, address=args.address)
    print(f"federated server: {result['rounds_done']} of {fed['rounds']} rounds done "
          f"(resumed after round {result['resumed_from']}); global checkpoint in {run_dir / 'checkpoints'}")
    return 0


def run_client(args: argparse.Namespace) -> int:
    from meddiff.tasks.federated import read_data_spec
    from meddiff.tasks.federated import run_client as serve_site

    config, fed, _ = _load(args)
    data = read_data_spec(args.data, config.get("data"))
    local = serve_site(config, fed, args.site, data, address=args.address, out=args.out, batch_size=args.batch_size)
    print(f"site {args.site}: done; local run in {local}")
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    from meddiff.tasks.federated import simulate

    config, fed, run_dir = _load(args)
    result = simulate(args.config, config, fed, args.sites, run_dir)
    for record in result["rounds"]:
        loss = record["train_loss"]
        print(f"round {record['round']}: sites {','.join(record['sites'])}, failures {record['failures']}, "
              f"train loss {loss:.4f}, {record['bytes_up'] / 1e6:.2f} MB up" if loss is not None
              else f"round {record['round']}: not aggregated ({record['failures']} failures)")
    print(f"{len(result['rounds'])} rounds in {result['wall_s']:.1f} s; global checkpoint: "
          f"meddiff sample --checkpoint {run_dir} ...; per-round log: {run_dir / 'log.jsonl'}")
    return 0
