"""The teacher's tag-bigram prior: fitted on train, weighted on valid, never worse than the constraint."""

from __future__ import annotations

import numpy as np

from cloud_controller.training.nlu_metrics import slot_prf
from cloud_controller.training.tag_prior import TagPrior, choose_weight, fit_tag_prior

TAGS = ["O", "B-city", "I-city", "B-state", "I-state"]
TRAIN = [["O", "B-city", "I-city", "I-city"], ["B-state", "I-state", "O"], ["O", "O", "B-city"]]


def _logp(rows: list[list[float]]) -> np.ndarray:
    p = np.asarray(rows, dtype=np.float64)
    return np.log(p / p.sum(1, keepdims=True))


# The classifier is torn between continuing the name and starting a second one (B-city B-city):
# the constraint alone allows both; train never had two names back to back.
SPLIT = _logp(
    [
        [0.9, 0.05, 0.01, 0.02, 0.02],
        [0.02, 0.9, 0.02, 0.03, 0.03],
        [0.02, 0.5, 0.44, 0.02, 0.02],
        [0.05, 0.05, 0.8, 0.05, 0.05],
    ]
)


def test_prior_joins_a_name_the_bare_constraint_splits() -> None:
    prior = fit_tag_prior(TRAIN, TAGS)
    assert prior.decode(SPLIT) == ["O", "B-city", "B-city", "I-city"]  # weight 0: the plain constraint
    weighted = TagPrior(prior.tags, prior.log_trans, prior.log_first, weight=0.5)
    assert weighted.decode(SPLIT) == ["O", "B-city", "I-city", "I-city"]


def test_weight_is_chosen_on_valid_and_zero_when_the_prior_does_not_help() -> None:
    prior = fit_tag_prior(TRAIN, TAGS)
    gold = [["O", "B-city", "I-city", "I-city"]]
    chosen, f1 = choose_weight(prior, [SPLIT], lambda pt: slot_prf(gold, pt)[2])
    assert chosen.weight > 0 and f1 == 100.0
    # When the split is right (gold has two names), the smallest weight that scores best wins: 0.
    two = [["O", "B-city", "B-city", "I-city"]]
    chosen, f1 = choose_weight(prior, [SPLIT], lambda pt: slot_prf(two, pt)[2])
    assert chosen.weight == 0.0 and f1 == 100.0


def test_prior_round_trips_through_json_and_never_breaks_bio() -> None:
    prior = fit_tag_prior(TRAIN, TAGS)
    back = TagPrior.from_dict(prior.as_dict())
    assert back.tags == prior.tags and np.allclose(back.log_trans, prior.log_trans)
    rng = np.random.default_rng(0)
    heavy = TagPrior(prior.tags, prior.log_trans, prior.log_first, weight=1.0)
    for _ in range(50):
        tags = heavy.decode(np.log(rng.dirichlet(np.ones(len(TAGS)), size=6)))
        for prev, cur in zip(["O", *tags], tags, strict=False):
            if cur.startswith("I-"):
                assert prev[2:] == cur[2:] and prev[0] in "BI"
