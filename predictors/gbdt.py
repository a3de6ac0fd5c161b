"""GBDTPredictor: LightGBM over OpSpec features, for ops the device never measured.

The trees learn the residual of a physically grounded base model (`predictors.physics`)
on log latency by default; `features`, `target`, `base`, `split` and `level_snap` are chosen
per device by cross-validation (`predictors.selection`). Models are stored as LightGBM text, never
pickled.
"""

from __future__ import annotations

import numpy as np

from latbench.ops import KINDS
from latbench.validation import Interval
from predictors._estimator import Estimator
from predictors.features import (FEATURE_SETS, as_spec_matrix, features_from_quantities, identity_rows,
                                 quantities)
from predictors.levels import LatencyLevels
from predictors.physics import LogLinearBase, PowerLawBase, _targets, base_from_dict

POOLED = "*"
MIN_FIT_ROWS = 5
CHUNK_ROWS = 8192


class GBDTPredictor(Estimator):
    """Latency (ms) of an op from its features.

    Parameters
    ----------
    features : ``raw`` | ``opspec`` | ``derived`` (see `predictors.features`).
    target : ``log`` fits log latency (relative errors weigh the same at every size),
        ``linear`` fits milliseconds.
    base : ``blend`` (geometric mean of ``power`` and ``loglinear``) | ``power`` |
        ``loglinear`` | ``none``: the model whose prediction the trees start from
        (LightGBM init_score).
    split : ``pooled`` (one model, op kind is a feature) or ``per_kind`` (one model per
        kind with at least `min_kind_rows` rows; the pooled model answers the others).
    n_estimators, learning_rate, num_leaves, min_data_in_leaf, extra_trees : LightGBM
        settings; few rows per device, hence small leaves and randomised splits.
    n_models : models trained with different seeds and averaged (variance down, time up).
    level_snap : a prediction moves up to this much (relative) towards the densest level of the
        measured latencies near it (`predictors.levels`: a GPU's small ops time at a few
        launch-overhead levels, and a smooth model predicts between them); 0 = off. Chosen by
        cross-validation.
    floor_ms : measured latencies below this are raised to it, and so are predictions.

    Identity skips are not fitted: they do no work, and their measured times (0 where a runtime
    removes them, a call overhead elsewhere) bent the fit of the ops that do. On HW-NAS-Bench,
    fitting half of all rows (10 seeds), +-10% on the other half's other ops went from 62.0 to
    64.0% on edgegpu, 67.4 to 69.9% on raspi4 and 81.2 to 84.1% on fpga (eyeriss: 75.3 both),
    and edgegpu's stem, head, pool and classifier from a median 0.77x of their time (a tenth
    under 0.15x) to 0.94x (0.58x). They are predicted as the median of the identities
    measured (`floor_ms` when none were).
    n_jobs : LightGBM threads.
    random_state : seed.
    """

    _constraints = {
        "features": tuple(FEATURE_SETS),
        "target": ("log", "linear"),
        "base": ("power", "loglinear", "blend", "none"),
        "split": ("pooled", "per_kind"),
        "n_estimators": Interval(int, 1),
        "learning_rate": Interval(float, 1e-6, 1.0),
        "num_leaves": Interval(int, 2),
        "min_data_in_leaf": Interval(int, 1),
        "extra_trees": (True, False),
        "n_models": Interval(int, 1),
        "level_snap": Interval(float, 0.0, 0.5),
        "min_kind_rows": Interval(int, 1),
        "floor_ms": Interval(float, 1e-9),
        "n_jobs": Interval(int, 1),
        "random_state": Interval(int, 0),
    }

    def __init__(self, features: str = "derived", *, target: str = "log", base: str = "blend",
                 split: str = "pooled", n_estimators: int = 150, learning_rate: float = 0.1,
                 num_leaves: int = 8, min_data_in_leaf: int = 3, extra_trees: bool = True,
                 n_models: int = 1, level_snap: float = 0.0, min_kind_rows: int = 40,
                 floor_ms: float = 1e-3, n_jobs: int = 1, random_state: int = 0):
        self.features = features
        self.target = target
        self.base = base
        self.split = split
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_data_in_leaf = min_data_in_leaf
        self.extra_trees = extra_trees
        self.n_models = n_models
        self.level_snap = level_snap
        self.min_kind_rows = min_kind_rows
        self.floor_ms = floor_ms
        self.n_jobs = n_jobs
        self.random_state = random_state

    # ---- fitting --------------------------------------------------------------------------

    def fit(self, X, y) -> "GBDTPredictor":
        """Fit on ops `X` (list of OpSpec or a `predictors.features.spec_matrix`) and their
        latencies `y` in milliseconds; returns self."""
        import lightgbm as lgb

        self._validate()
        m = as_spec_matrix(X)
        y = _targets(y, len(m))
        identity = identity_rows(m)
        self.identity_ms_ = max(float(np.median(y[identity])) if identity.any() else 0.0, self.floor_ms)
        m, y = m[~identity], y[~identity]
        if len(m) < MIN_FIT_ROWS:
            raise ValueError(f"{type(self).__name__} needs at least {MIN_FIT_ROWS} measured ops "
                             f"that are not identity skips to fit; got {len(m)}")
        y = np.maximum(y, self.floor_ms)
        self.bases_ = self._fit_bases(m, y)
        q = quantities(m)
        feats = features_from_quantities(q, len(m), self.features)
        init = self._init_score(q, feats)
        target = np.log(y) if self.target == "log" else y
        kinds = m[:, 0]
        groups = {POOLED: np.ones(len(m), dtype=bool)}
        if self.split == "per_kind":
            for kind_id, kind in enumerate(KINDS):
                mask = kinds == kind_id
                if mask.sum() >= self.min_kind_rows:
                    groups[kind] = mask
        self.boosters_: dict[str, list] = {}
        for name, mask in groups.items():
            self.boosters_[name] = [
                self._train(lgb, feats[mask], target[mask], init[mask], seed)
                for seed in range(self.random_state, self.random_state + self.n_models)]
        self.levels_ = LatencyLevels(self.level_snap).fit(y) if self.level_snap > 0 else None
        self.feature_names_in_ = FEATURE_SETS[self.features]
        self.n_features_in_ = len(self.feature_names_in_)
        return self

    def _fit_bases(self, m: np.ndarray, y: np.ndarray) -> list:
        names = {"none": [], "power": ["power"], "loglinear": ["loglinear"],
                 "blend": ["power", "loglinear"]}[self.base]
        fitted = []
        for name in names:
            est = PowerLawBase(floor_ms=self.floor_ms) if name == "power" else LogLinearBase(
                floor_ms=self.floor_ms)
            fitted.append(est.fit(m, y))
        return fitted

    def _init_score(self, q: dict[str, np.ndarray], feats: np.ndarray | None = None) -> np.ndarray:
        """The bases' prediction in target units (0 when there is no base)."""
        if not self.bases_:
            return np.zeros(len(q["cin"]))
        derived = feats if self.features == "derived" else None
        log_base = np.mean([np.log(b.predict_quantities(q, derived)) for b in self.bases_], axis=0)
        return log_base if self.target == "log" else np.exp(log_base)

    def _train(self, lgb, feats, target, init, seed: int):
        params = {
            "objective": "regression", "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves, "min_data_in_leaf": self.min_data_in_leaf,
            "extra_trees": bool(self.extra_trees), "seed": seed, "deterministic": True,
            "num_threads": self.n_jobs, "verbose": -1, "force_col_wise": True,
        }
        data = lgb.Dataset(feats, target, init_score=init, feature_name=list(FEATURE_SETS[self.features]),
                           params={"min_data_in_bin": 1, "verbose": -1, "feature_pre_filter": False})
        return lgb.train(params, data, num_boost_round=self.n_estimators)

    # ---- prediction -----------------------------------------------------------------------

    def predict(self, X) -> np.ndarray:
        """Predicted latency in milliseconds of each op of `X`."""
        self._check_fitted("boosters_")
        m = as_spec_matrix(X)
        if len(m) <= CHUNK_ROWS:
            pred = self._predict_matrix(m)
        else:  # blocks of rows: the temporaries stay small and reused instead of freshly paged in
            pred = np.concatenate([self._predict_matrix(m[i:i + CHUNK_ROWS])
                                   for i in range(0, len(m), CHUNK_ROWS)])
        if self.levels_ is not None:
            pred = self.levels_.apply(pred)
        if self.identity_ms_ is not None:  # None: a model saved before identities were set apart
            pred = np.where(identity_rows(m), self.identity_ms_, pred)
        return pred

    def _predict_matrix(self, m: np.ndarray) -> np.ndarray:
        if len(m) == 0:
            return np.zeros(0)
        q = quantities(m)
        feats = features_from_quantities(q, len(m), self.features)
        if len(self.boosters_) == 1:  # pooled: one model answers every row
            raw = self._predict_group(self.boosters_[POOLED], feats) + self._init_score(q, feats)
            return self._to_ms(raw)
        raw = np.zeros(len(m))
        assigned = np.zeros(len(m), dtype=bool)
        for name, boosters in self.boosters_.items():
            if name == POOLED:
                continue
            mask = m[:, 0] == KINDS.index(name)
            if mask.any():
                raw[mask] = self._predict_group(boosters, feats[mask])
                assigned |= mask
        if not assigned.all():
            rest = ~assigned
            raw[rest] = self._predict_group(self.boosters_[POOLED], feats[rest])
        raw = raw + self._init_score(q, feats)
        return self._to_ms(raw)

    def _to_ms(self, raw: np.ndarray) -> np.ndarray:
        """Raw scores as latencies, never under `floor_ms`: a linear target's trees can go to 0 or
        below (an unseen pool or fc at 0 ms), and no op that runs takes no time; a search would
        take such a candidate for free."""
        return np.maximum(np.exp(raw) if self.target == "log" else raw, self.floor_ms)

    def _predict_group(self, boosters: list, feats: np.ndarray) -> np.ndarray:
        raw = boosters[0].predict(feats, raw_score=True, num_threads=self.n_jobs)
        for b in boosters[1:]:
            raw += b.predict(feats, raw_score=True, num_threads=self.n_jobs)
        return raw / len(boosters) if len(boosters) > 1 else raw

    # ---- plain-file serialisation ---------------------------------------------------------

    def to_files(self) -> tuple[dict, dict[str, str]]:
        """(JSON-able description, {file name: LightGBM model text}) of the fitted model."""
        self._check_fitted("boosters_")
        models = {}
        index = {}
        for name, boosters in self.boosters_.items():
            label = "pooled" if name == POOLED else name
            index[name] = []
            for i, booster in enumerate(boosters):
                fname = f"gbdt_{label}_{i}.txt"
                models[fname] = booster.model_to_string()
                index[name].append(fname)
        meta = {"params": self.get_params(), "feature_names": list(self.feature_names_in_),
                "bases": [b.to_dict() for b in self.bases_], "models": index}
        if self.levels_ is not None:
            meta["levels"] = self.levels_.to_dict()
        meta["identity_ms"] = self.identity_ms_
        return meta, models

    @classmethod
    def from_files(cls, meta: dict, models: dict[str, str]) -> "GBDTPredictor":
        """Inverse of `to_files`; ValueError when the description does not fit this code."""
        import lightgbm as lgb

        est = cls(**meta["params"])
        expected = list(FEATURE_SETS[est.features])
        if list(meta["feature_names"]) != expected:
            raise ValueError(f"its feature list differs from this version's {est.features!r} features")
        est.bases_ = [base_from_dict(d) for d in meta["bases"]]
        if est.level_snap > 0 and not isinstance(meta.get("levels"), dict):
            raise ValueError("it snaps to latency levels (level_snap) but does not list them")
        est.levels_ = LatencyLevels.from_dict(meta["levels"]) if est.level_snap > 0 else None
        identity_ms = meta.get("identity_ms")
        if identity_ms is not None and not (isinstance(identity_ms, (int, float))
                                            and np.isfinite(identity_ms) and identity_ms >= 0):
            raise ValueError(f"its identity_ms is not a latency >= 0: {identity_ms!r}")
        est.identity_ms_ = None if identity_ms is None else float(identity_ms)
        est.boosters_ = {name: [lgb.Booster(model_str=_model_text(f, models[f])) for f in files]
                         for name, files in meta["models"].items()}
        est.feature_names_in_ = tuple(expected)
        est.n_features_in_ = len(expected)
        return est


#: Header lines LightGBM needs in a text model: without one, it prints "[LightGBM] [Fatal]" to
#: the C stdout before it raises.
_MODEL_HEADER = ("num_class=", "label_index=", "max_feature_idx=")


def _model_text(name: str, text: str) -> str:
    head = text[:4096].splitlines()
    for line in _MODEL_HEADER:
        if not any(h.startswith(line) for h in head):
            raise ValueError(f"{name} is not a LightGBM text model (no {line[:-1]!r} line)")
    # LightGBM cuts the trees out by the byte sizes its header lists, in parallel threads: a
    # cut-short or padded model makes it abort the whole process, so check them here.
    sizes_line = next((h for h in text[:1 << 20].splitlines() if h.startswith("tree_sizes=")), None)
    end = text.find("end of trees")
    if end < 0:
        raise ValueError(f"{name} is not a whole LightGBM text model (no 'end of trees' line: cut short?)")
    if sizes_line is not None:
        try:
            sizes = [int(v) for v in sizes_line.split("=", 1)[1].split()]
        except ValueError:
            raise ValueError(f"{name}: its tree_sizes line is not a list of sizes") from None
        start = text.find("Tree=0\n")
        if start < 0 or end - start != sum(sizes) or text.count("\nTree=") != len(sizes):
            raise ValueError(f"{name}: its trees do not match the sizes its header lists "
                             "(a cut-short or edited model)")
    return text
