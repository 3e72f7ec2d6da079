"""Visual Turing test kit (issue 29): a blinded real-vs-synthetic reading study, served on this machine only.

`create_study` draws the balanced, de-identified set; `serve_study` runs the reading page on 127.0.0.1 and logs
every answer durably; `write_score` gives accuracy (Wilson interval), sensitivity/specificity, Fleiss' kappa, an
exact binomial test and seed 002's verdict (accuracy < 55 %).
"""

from meddiff.tasks.turing.score import score_study, verdict, write_score
from meddiff.tasks.turing.server import make_app, serve_study
from meddiff.tasks.turing.stats import binomial_test, fleiss_kappa, wilson_interval
from meddiff.tasks.turing.study import create_study, load_manifest, rater_order

__all__ = ["binomial_test", "create_study", "fleiss_kappa", "load_manifest", "make_app", "rater_order",
           "score_study", "serve_study", "verdict", "wilson_interval", "write_score"]
