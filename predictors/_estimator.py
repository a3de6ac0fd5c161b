"""A small scikit-learn-style base: settings from __init__, checked in fit, 'call fit first'.

Estimators here work with scikit-learn's tools (`clone`, `cross_val_score`, `GridSearchCV`,
nested ``gbdt__n_estimators`` settings) without importing scikit-learn: it is read only when
scikit-learn itself asks for an estimator's tags.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from latbench.validation import check_params


class NotFittedError(ValueError, AttributeError):
    """predict (or save) was called on an estimator that was never fitted."""


class Estimator:
    """Settings are the arguments of `__init__`, stored unchanged under their own names.

    Subclasses list limits as data in `_constraints` (name -> Interval or tuple of choices);
    `_validate()` checks them when `fit` runs, so the error names the setting and its owner.
    Every estimator here is a regressor: `score(X, y)` is R^2, as in scikit-learn.
    """

    _constraints: dict[str, Any] = {}
    #: scikit-learn before 1.6 reads this (is_regressor, the default scorer of cross_val_score).
    _estimator_type = "regressor"

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Settings by name; with `deep`, also those of nested estimators as ``name__setting``."""
        params = {name: getattr(self, name) for name in self._param_names()}
        if deep:
            for name, value in list(params.items()):
                if isinstance(value, Estimator):
                    params.update({f"{name}__{k}": v for k, v in value.get_params(deep=True).items()})
        return params

    def set_params(self, **params: Any) -> "Estimator":
        """Change settings; ``name__setting`` changes a setting of the nested estimator `name`."""
        valid = self._param_names()
        nested: dict[str, dict[str, Any]] = {}
        for name, value in params.items():
            name, sep, sub = name.partition("__")
            if name not in valid:
                raise ValueError(f"{type(self).__name__} has no setting {name!r}; "
                                 f"settings: {', '.join(valid)}")
            if sep:
                nested.setdefault(name, {})[sub] = value
            else:
                setattr(self, name, value)
        for name, sub_params in nested.items():
            inner = getattr(self, name)
            if not isinstance(inner, Estimator):
                raise ValueError(f"cannot set {', '.join(f'{name}__{k}' for k in sub_params)}: "
                                 f"{type(self).__name__}'s {name} is {inner!r}, not an estimator; "
                                 f"set {name} first (e.g. {name}=GBDTPredictor())")
            inner.set_params(**sub_params)
        return self

    def score(self, X, y) -> float:
        """R^2 of ``predict(X)`` against `y` (scikit-learn's score for regressors)."""
        y = np.asarray(y, dtype=np.float64).ravel()
        pred = np.asarray(self.predict(X), dtype=np.float64).ravel()
        if pred.shape != y.shape:
            raise ValueError(f"X has {len(pred)} rows but y has {len(y)} values")
        total = float(np.sum((y - y.mean()) ** 2))
        residual = float(np.sum((y - pred) ** 2))
        if total == 0.0:
            return 1.0 if residual == 0.0 else 0.0
        return 1.0 - residual / total

    def __sklearn_tags__(self):
        """scikit-learn >= 1.6 asks for these; only then is scikit-learn imported."""
        from sklearn.utils import RegressorTags, Tags, TargetTags

        return Tags(estimator_type="regressor", target_tags=TargetTags(required=True),
                    regressor_tags=RegressorTags())

    def __repr__(self) -> str:
        sig = inspect.signature(type(self).__init__)
        changed = [f"{n}={v!r}" for n, v in self.get_params(deep=False).items()
                   if sig.parameters[n].default is inspect.Parameter.empty
                   or v != sig.parameters[n].default]
        return f"{type(self).__name__}({', '.join(changed)})"

    def _validate(self) -> None:
        check_params(type(self).__name__, self.get_params(deep=False), self._constraints)

    def _check_fitted(self, attribute: str) -> None:
        if not hasattr(self, attribute):
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call fit first.")
