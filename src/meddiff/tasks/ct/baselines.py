"""Classical CT reconstructions of a ``CTProblem`` in HU: FBP, SIRT (or OS-SART with ``subsets``) and TV
(Chambolle-Pock), over the whole slice stack at once. Defaults: ``meddiff.physics.ct.DEFAULTS`` (SIRT 100
iterations; TV lam, the weight of TV against the data term divided by ||A||^2, set on the development slices of
benchmarks/ct_reconstruction.py) and the ramp filter."""

from __future__ import annotations

from torch import Tensor

from meddiff.errors import MeddiffError, check_choice
from meddiff.physics.ct import FILTERS, fbp, sirt, tv
from meddiff.tasks.ct.problem import CTProblem

BASELINES = ("fbp", "sirt", "tv")
BASELINE_PARAMS = {"fbp": ("filter",), "sirt": ("iters", "subsets", "relax"), "tv": ("lam", "iters")}


def baseline(method: str, problem: CTProblem, **params) -> Tensor:
    """HU images (S, H, W) of a classical method; ``params`` override its defaults (unknown ones are an error)."""
    check_choice("method", method, BASELINES)
    params = {k: v for k, v in params.items() if v is not None}
    unknown = sorted(set(params) - set(BASELINE_PARAMS[method]))
    if unknown:
        raise MeddiffError(f"method {method!r}: unknown parameter(s) {unknown}; allowed: "
                           f"{list(BASELINE_PARAMS[method])}")
    if method == "fbp":
        check_choice("filter", params.get("filter", "ramp"), FILTERS)
        x = fbp(problem.y, problem.angles, problem.size, **params)
    elif method == "sirt":
        x = sirt(problem.op, problem.y, **params)
    else:
        x = tv(problem.op, problem.y, **params)
    return problem.to_hu(x)
