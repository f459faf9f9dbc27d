"""DReX behind the evaluation's ``Recommender`` interface: epochs, early stopping.

Training is a sequence of passes over the training interactions in event-time order.
Each pass starts from the initial representations (``reset_memory``) and calls
:meth:`DReXLearner.learn_many`, the same method the streaming worker calls. After each
pass the model is scored on the validation split; the best pass (by the chosen
criterion) is kept, and training stops after ``patience`` passes without improvement.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drex_model.evaluate.metrics import RELEVANT_RATING, ranking_metrics, rating_metrics
from drex_model.learner import DReXLearner
from drex_model.model import DReXConfig
from drex_model.scoring import Blend
from drex_model.text import ReviewCache
from drex_model.types import Interaction

EARLY_STOP = ("ranking", "rmse")
# The ranking blend's grid (drex_model.scoring.Blend), searched on validation for the
# terms the config turns on (a weight of 0 stays 0; exposure_weight -1 asks for a search)
EXPOSURE_GRID = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
RATING_GRID = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)
CONTENT_GRID = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
SHRINKAGE_GRID = (10.0, 50.0, 200.0)
BLEND_K = 10  # the blend is chosen by validation NDCG@10, the figure the test reports


@dataclass
class EpochLog:
    epoch: int
    train_rmse: float  # prequential: each prediction scored before its interaction
    valid_rmse: float
    valid_ranking: float  # mean of F1@5 and NDCG@5 over all unrated items
    seconds: float


@dataclass
class DReXRecommender:
    """Fits a :class:`DReXLearner` by passes with early stopping on validation.

    ``early_stop="ranking"`` is the paper's criterion (mean of F1@5 and NDCG@5, here over
    every item the user has not rated in training); ``"rmse"`` uses validation RMSE.
    """

    config: DReXConfig
    cache: ReviewCache | None
    seed: int = 0
    max_epochs: int = 100
    patience: int = 10
    early_stop: str = "rmse"
    device: str = "cpu"
    progress: bool = False
    on_epoch: Callable[[EpochLog], None] | None = None
    history: list[EpochLog] = field(default_factory=list)
    best_epoch: int = -1
    blend: Blend = field(default_factory=Blend)  # the ranking's weights after fit()
    predicts_ratings: bool = True

    def __post_init__(self) -> None:
        if self.early_stop not in EARLY_STOP:
            raise ValueError(f"early_stop must be one of {EARLY_STOP}, not {self.early_stop!r}")
        self.learner: DReXLearner | None = None

    @property
    def name(self) -> str:
        return self.config.variant

    def fit(
        self,
        train: Sequence[Interaction],
        valid: Sequence[Interaction],
        catalogue: Sequence[Interaction] = (),
    ) -> None:
        """Train on ``train``; ``catalogue`` (all interactions) only registers the ids."""
        everyone = list(catalogue) or list(train) + list(valid)
        users = sorted({x.user for x in everyone})
        items = sorted({x.item for x in everyone})
        learner = DReXLearner(
            self.config,
            cache=self.cache,
            seed=self.seed,
            device=self.device,
            n_users_hint=len(users),
            n_items_hint=len(items),
        )
        learner.register("users", users)  # fixed row order: runs repeat exactly
        learner.register("items", items)
        learner.track_keywords = False  # profiles come from the kept pass, see below
        self.learner = learner
        seen = _seen(train)
        rated_train = np.array([x.rating for x in train if x.rating is not None])
        best_score, best_state, waited = -np.inf, None, 0
        epochs = range(self.max_epochs)
        if self.progress:
            from tqdm.auto import tqdm

            epochs = tqdm(epochs, desc=f"{self.name} seed {self.seed}", unit="epoch", leave=False)
        for epoch in epochs:
            start = time.perf_counter()
            learner.reset_memory()
            learner.refresh_preferences()
            preq = learner.learn_many(train)
            learner.refresh_preferences()
            rated = np.array([x.rating is not None for x in train])
            train_rmse = float(np.sqrt(np.mean((preq[rated] - rated_train) ** 2)))
            v_rmse, v_rank = self._validate(valid, seen, items)
            log = EpochLog(epoch, train_rmse, v_rmse, v_rank, time.perf_counter() - start)
            self.history.append(log)
            if self.on_epoch:
                self.on_epoch(log)
            if hasattr(epochs, "set_postfix"):
                epochs.set_postfix(valid_rmse=f"{v_rmse:.4f}", valid_rank=f"{v_rank:.4f}")
            score = v_rank if self.early_stop == "ranking" else -v_rmse
            if score > best_score:
                best_score, waited, self.best_epoch = score, 0, epoch
                best_state = copy.deepcopy(_state(learner))
            else:
                waited += 1
                if waited >= self.patience:
                    break
        assert best_state is not None
        _restore(learner, best_state)
        learner.blend = self.blend = self._choose_blend(valid, seen, items)
        learner.rebuild_keywords(train)

    def _choose_blend(
        self, valid: Sequence[Interaction], seen: dict[str, set[str]], items: Sequence[str]
    ) -> Blend:
        """The ranking weights (:class:`drex_model.scoring.Blend`) best on validation by
        NDCG@10, searched over the terms the config turns on; the co-occurrence weight
        stays as configured and sets the scale (the paper's variants rank by rating
        alone and are left as they are)."""
        learner = self._learner()
        c = self.config
        start = Blend.from_config(c.to_dict())
        on = {
            "rating": c.rating_weight != 0,
            "exposure": c.exposure_weight != 0,  # -1 asks for a search too
            "content": c.content_weight != 0 and c.use_text,
            "shrinkage": c.cooccurrence_weight != 0,
        }
        if sum(on.values()) < 2:  # one term: its weight would only scale the ranking
            return start
        grids = {
            "rating": RATING_GRID if on["rating"] else (start.rating,),
            "exposure": EXPOSURE_GRID if on["exposure"] else (start.exposure,),
            "content": CONTENT_GRID if on["content"] else (start.content,),
            "shrinkage": SHRINKAGE_GRID if on["shrinkage"] else (start.shrinkage,),
        }
        users, relevant = _relevant(valid)
        if not users:
            return start
        keep = [
            np.array([j for j, i in enumerate(items) if i not in seen.get(u, ())]) for u in users
        ]
        flags = [
            np.isin(np.asarray(items)[k], list(relevant[u]))
            for u, k in zip(users, keep, strict=True)
        ]
        best, best_score = start, -np.inf
        for shrinkage in grids["shrinkage"]:
            raw, counts, cooc, content = learner.ranking_terms(users, items, shrinkage)
            for rating, exposure, content_w in itertools.product(
                grids["rating"], grids["exposure"], grids["content"]
            ):
                blend = dataclasses.replace(
                    start, rating=rating, exposure=exposure, content=content_w, shrinkage=shrinkage
                )
                scores = blend.rank(raw, counts, cooc, content)
                per_user = [
                    (scores[r, k], f) for r, (k, f) in enumerate(zip(keep, flags, strict=True))
                ]
                score = ranking_metrics(per_user, ks=(BLEND_K,))[f"ndcg@{BLEND_K}"]
                if score > best_score:
                    best, best_score = blend, score
        return best

    def _validate(
        self, valid: Sequence[Interaction], seen: dict[str, set[str]], items: Sequence[str]
    ) -> tuple[float, float]:
        rated = [x for x in valid if x.rating is not None]
        if not rated:
            return float("nan"), float("nan")
        pred = self.predict([x.user for x in rated], [x.item for x in rated])
        rmse = rating_metrics(np.array([x.rating for x in rated]), pred)["rmse"]
        users, relevant = _relevant(rated)
        if not users:
            return rmse, float("nan")
        scores = self.score_matrix(users, items)
        per_user = []
        for row, user in enumerate(users):
            keep = [j for j, i in enumerate(items) if i not in seen.get(user, ())]
            per_user.append(
                (scores[row, keep], np.array([items[j] in relevant[user] for j in keep]))
            )
        m = ranking_metrics(per_user, ks=(5,))
        return rmse, (m["f1@5"] + m["ndcg@5"]) / 2

    def _learner(self) -> DReXLearner:
        if self.learner is None:
            raise RuntimeError("fit() first")
        return self.learner

    def predict(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        return self._learner().predict_many(users, items)

    def score_items(self, user: str, items: Sequence[str]) -> np.ndarray:
        return self._learner().ranking_scores([user], items)[0]

    def score_matrix(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        return self._learner().ranking_scores(users, items)


def _relevant(part: Sequence[Interaction]) -> tuple[list[str], dict[str, set[str]]]:
    """The users with a relevant item in ``part`` (sorted), and those items."""
    relevant: dict[str, set[str]] = {}
    for x in part:
        if x.rating is not None and x.rating >= RELEVANT_RATING:
            relevant.setdefault(x.user, set()).add(x.item)
    return sorted(relevant), relevant


def _seen(train: Sequence[Interaction]) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for x in train:
        seen.setdefault(x.user, set()).add(x.item)
    return seen


def _state(learner: DReXLearner) -> dict[str, Any]:
    return learner.state_dict()


def _restore(learner: DReXLearner, state: dict[str, Any]) -> None:
    learner.load_state_dict(state)
