"""Bootstrap statistics, utility training sets and fairness probes against direct references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from synthgen.data.schema import Schema
from synthgen.metrics import fairness, stats
from synthgen.metrics.utility import Scores, balanced_rows


def test_auroc_equals_sklearn_with_ties_and_over_rows() -> None:
    rng = np.random.default_rng(11)
    scores = np.round(rng.random((5, 300)), 1)  # many ties
    labels = rng.random((5, 300)) < 0.3
    ours = stats.auroc(scores, labels)
    for row in range(5):
        assert ours[row] == pytest.approx(roc_auc_score(labels[row], scores[row]), abs=1e-12)
    assert np.isnan(stats.auroc(scores[0], np.zeros(300, bool)))[0]


def test_sensitivity_at_specificity_on_a_known_split() -> None:
    negatives = np.linspace(0.0, 0.99, 100)
    positives = np.array([0.5, 0.95, 0.97, 0.995])
    scores = np.concatenate([negatives, positives])
    labels = np.concatenate([np.zeros(100, bool), np.ones(4, bool)])
    # 90 % of negatives lie at or below 0.8911: the positives above it are 0.95, 0.97, 0.995
    assert stats.sensitivity_at_specificity(scores, labels, 0.9)[0] == pytest.approx(0.75)


def test_resamples_and_summary() -> None:
    draws = stats.resamples(50, 200, seed=3)
    assert draws.shape == (200, 50)
    assert (draws[0] == np.arange(50)).all()
    assert (draws == stats.resamples(50, 200, seed=3)).all()
    rng = np.random.default_rng(4)
    values = np.concatenate([[0.5], rng.normal(0.5, 0.1, 999)])
    found = stats.summarise(values)
    assert found["mean"] == 0.5
    assert found["lo"] == pytest.approx(0.5 - 1.96 * 0.1, abs=0.03)
    assert found["hi"] == pytest.approx(0.5 + 1.96 * 0.1, abs=0.03)


def test_balanced_rows_top_every_cell_up_to_the_largest() -> None:
    real = pd.DataFrame({"site": ["A"] * 10 + ["B"] * 40 + ["C"] * 5, "y": ["0", "1"] * 27 + ["0"]})
    rng = np.random.default_rng(5)
    synthetic = pd.DataFrame(
        {"site": rng.choice(list("ABC"), 300).tolist(), "y": rng.choice(["0", "1"], 300).tolist()}
    )
    rows, cells = balanced_rows(real, synthetic, ["site", "y"])
    assert len(set(rows)) == len(rows)
    goal = real.value_counts().max()
    picked = synthetic.iloc[rows].value_counts()
    for (site, y), have in real.value_counts().items():
        available = int(((synthetic.site == site) & (synthetic.y == y)).sum())
        want = min(goal - have, available)
        assert picked.get((site, y), 0) == want
        assert cells[f"site={site}, y={y}"] == {"real": have, "synthetic": want}


SCHEMA = Schema.model_validate(
    {
        "columns": {
            "image": {"role": "image"},
            "y": {"role": "label", "levels": [0, 1]},
            "sex": {"role": "covariate", "levels": ["F", "M"]},
            "site": {"role": "covariate", "levels": ["A", "B"]},
            "age": {"role": "covariate", "range": [20, 80]},
            "subtype": {"role": "ignore"},
        }
    }
)


def _fair_case(seed: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Site A: scores separate the classes perfectly; site B: scores are noise."""
    rng = np.random.default_rng(seed)
    n = 400
    site = rng.choice(["A", "B"], n)
    labels = rng.random(n) < 0.4
    scores = np.where(site == "A", 0.25 + 0.5 * labels, rng.random(n))
    table = pd.DataFrame(
        {
            "site": site,
            "sex": rng.choice(["F", "M"], n),
            "age": rng.integers(20, 81, n).astype(str),
            "subtype": np.where(labels, np.where(site == "A", "easy", "hard"), "none"),
        }
    )
    return labels, scores, table


def test_fairness_probe_finds_the_planted_gap_and_matches_direct_figures() -> None:
    labels, scores, table = _fair_case(6)
    found = fairness.probe(labels, scores, table["site"])
    a, b = (table["site"] == "A").to_numpy(), (table["site"] == "B").to_numpy()
    assert found["groups"]["A"]["auroc"] == pytest.approx(1.0)
    assert found["groups"]["B"]["auroc"] == pytest.approx(roc_auc_score(labels[b], scores[b]))
    assert found["groups"]["A"]["tpr"] == pytest.approx(1.0)
    assert found["groups"]["A"]["fpr"] == pytest.approx(0.0)
    assert (
        found["groups"]["B"]["n"] == b.sum()
        and found["groups"]["A"]["positives"] == labels[a].sum()
    )
    assert found["worst_group"]["group"] == "B"
    assert found["largest_gap"]["auroc"] == pytest.approx(1.0 - found["groups"]["B"]["auroc"])
    assert found["largest_gap"]["auroc"] > 0.35


def test_subgroups_bins_intersections_and_hidden_strata() -> None:
    labels, scores, table = _fair_case(7)
    groups = fairness.subgroup_columns(SCHEMA, table)
    assert set(groups.columns) == {"sex", "site", "age bin", "sex × site"}
    assert set(groups["age bin"]) == {"20-40", "40-60", "60-80"}
    assert groups.loc[table["age"] == "80", "age bin"].eq("60-80").all()
    assert set(groups["sex × site"]) == {"F/A", "F/B", "M/A", "M/B"}
    strata = fairness.hidden_strata(SCHEMA, labels, scores, table)["subtype"]
    assert strata["easy"]["auroc_vs_negatives"] > strata["hard"]["auroc_vs_negatives"]
    assert strata["easy"]["sensitivity"] == 1.0
    assert strata["none"]["positives"] == 0


def test_fairness_report_covers_every_regime() -> None:
    labels, scores, table = _fair_case(8)
    runs = {"real": np.stack([scores, scores]), "synthetic": np.stack([1 - scores, 1 - scores])}
    found = fairness.report(SCHEMA, Scores(labels, table, runs), bootstrap=50)
    assert set(found["regimes"]) == {"real", "synthetic"}
    site_ci = found["regimes"]["real"]["auroc_ci"]["site"]["A"]
    assert site_ci["mean"] == pytest.approx(1.0)
    flipped = found["regimes"]["synthetic"]["by_subgrouping"]["site"]["groups"]["A"]["auroc"]
    assert flipped == pytest.approx(0.0)


def test_tpr_gap_matches_the_probe_and_pairs_the_regimes() -> None:
    labels, scores, table = _fair_case(9)
    groups = fairness.subgroup_columns(SCHEMA, table)["site"]
    perfect = labels.astype(float)
    runs = {"real": np.stack([scores]), "same": np.stack([scores]), "perfect": np.stack([perfect])}
    gaps, differences = fairness.tpr_gaps(labels, runs, groups, count=200)
    probe = fairness.probe(labels, scores, groups)["largest_gap"]["tpr"]
    assert gaps["real"]["mean"] == pytest.approx(probe)
    assert gaps["real"]["lo"] <= probe <= gaps["real"]["hi"]
    assert gaps["perfect"] == {"mean": 0.0, "lo": 0.0, "hi": 0.0}
    assert differences["same"] == {"mean": 0.0, "lo": 0.0, "hi": 0.0}  # paired resamples
    assert differences["perfect"]["mean"] == pytest.approx(-probe)
    assert set(differences) == {"same", "perfect"}
