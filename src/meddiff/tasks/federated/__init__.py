"""Federated training across sites on Flower (`flwr`): a meddiff Trainer at every site, Flower's FedAvg/FedProx
at the server, the global model checkpointed each round as a meddiff checkpoint. Only network weights and scalar
metrics leave a site. Flower is imported only when a server or client starts (optional extra `federated`)."""

from meddiff.tasks.federated.client import METRIC_KEYS, SiteTrainer, run_client, site_seed
from meddiff.tasks.federated.config import (
    FEDERATED_DEFAULTS,
    STRATEGIES,
    load_federated_config,
    read_data_spec,
    site_batches,
    split_config,
)
from meddiff.tasks.federated.server import run_server
from meddiff.tasks.federated.simulate import free_port, simulate
from meddiff.tasks.federated.sites import assign_subjects, dataset_subjects, write_site_specs

__all__ = [
    "FEDERATED_DEFAULTS", "METRIC_KEYS", "STRATEGIES", "SiteTrainer", "assign_subjects", "dataset_subjects",
    "free_port", "load_federated_config", "read_data_spec", "run_client", "run_server", "simulate", "site_batches",
    "site_seed", "split_config", "write_site_specs",
]
