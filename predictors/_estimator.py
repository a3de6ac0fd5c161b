"""A small scikit-learn-style base: settings from __init__, checked in fit, 'call fit first'."""

from __future__ import annotations

import inspect
from typing import Any

from latbench.validation import check_params


class NotFittedError(ValueError, AttributeError):
    """predict (or save) was called on an estimator that was never fitted."""


class Estimator:
    """Settings are the arguments of `__init__`, stored unchanged under their own names.

    Subclasses list limits as data in `_constraints` (name -> Interval or tuple of choices);
    `_validate()` checks them when `fit` runs, so the error names the setting and its owner.
    """

    _constraints: dict[str, Any] = {}

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> "Estimator":
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"{type(self).__name__} has no setting {name!r}; "
                                 f"settings: {', '.join(valid)}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        sig = inspect.signature(type(self).__init__)
        changed = [f"{n}={v!r}" for n, v in self.get_params().items()
                   if sig.parameters[n].default is inspect.Parameter.empty
                   or v != sig.parameters[n].default]
        return f"{type(self).__name__}({', '.join(changed)})"

    def _validate(self) -> None:
        check_params(type(self).__name__, self.get_params(), self._constraints)

    def _check_fitted(self, attribute: str) -> None:
        if not hasattr(self, attribute):
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call fit first.")
