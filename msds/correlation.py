"""How well scores agree with human opinion: SRCC, KRCC, and PLCC / RMSE after
the usual five-parameter monotonic logistic mapping of image-quality work."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import optimize, stats


def logistic5(x: np.ndarray, b1: float, b2: float, b3: float, b4: float, b5: float) -> np.ndarray:
    """b1 (1/2 - 1 / (1 + exp(b2 (x - b3)))) + b4 x + b5."""
    return b1 * (0.5 - 1.0 / (1.0 + np.exp(np.clip(b2 * (x - b3), -60, 60)))) + b4 * x + b5


def logistic5_jacobian(x: np.ndarray, b1: float, b2: float, b3: float, b4: float, b5: float) -> np.ndarray:
    """(len(x), 5): the derivatives of logistic5 with respect to b1 ... b5."""
    q = 1.0 / (1.0 + np.exp(np.clip(b2 * (x - b3), -60, 60)))
    slope = q * (1.0 - q)
    return np.stack([0.5 - q, b1 * slope * (x - b3), -b1 * slope * b2, x, np.ones_like(x)], axis=1)


# Iterations (function evaluations) the logistic fit may take. Nearly linear data drive
# it toward a degenerate corner (a vanishing or endless logistic term) that
# it approaches without converging; every point inside the bounds is a
# monotonic map, so the best one found within this budget is used.
FIT_EVALUATIONS = 300


def fit_mapping(scores: np.ndarray, mos: np.ndarray,
                start: Optional[Sequence[float]] = None) -> Tuple[Callable[[np.ndarray], np.ndarray], str]:
    """The monotonic mapping of scores onto the MOS scale, and its name.

    The five-parameter logistic is fitted as a monotonic map in the direction
    of the rank correlation (SRCC), as the field reads it: with b2 >= 0 (the
    logistic term is unchanged when b1 and b2 both change sign), b1 and the
    linear term b4 take the sign of the SRCC, so the slope b1 b2 s (1 - s) +
    b4 never changes sign. It is fitted by bounded least squares on
    standardised scores (MSDS scores crowd near 1, which makes the raw fit
    ill-conditioned), from `start` (parameters on the standardised scale,
    as the returned mapping's `params` holds them; the bootstrap starts each
    resample from the full sample's) or a generic start. With fewer than
    6 pairs, or when the fit ends in no finite parameters, a straight line
    with its slope in the same direction (flat if least squares would slope
    the other way) takes its place. The returned function maps any scores,
    so a plot can draw the curve.
    """
    spread = scores.std()
    sign = 1.0 if spread == 0 or stats.spearmanr(scores, mos)[0] >= 0 else -1.0
    if len(scores) < 6 or spread == 0:
        return _linear(scores, mos, sign), "linear (too few pairs or constant scores for the logistic)"
    centre = scores.mean()
    z = (scores - centre) / spread
    signed = (0.0, np.inf) if sign > 0 else (-np.inf, 0.0)
    lower, upper = zip(signed, (0.0, np.inf), (-np.inf, np.inf), signed, (-np.inf, np.inf))
    generic = [sign * (mos.max() - mos.min()), 1.0, 0.0, 0.0, float(mos.mean())]
    first = np.clip(generic if start is None else start, lower, upper)
    try:
        result = optimize.least_squares(lambda p: logistic5(z, *p) - mos, first, bounds=(lower, upper),
                                        jac=lambda p: logistic5_jacobian(z, *p), max_nfev=FIT_EVALUATIONS)
        params = result.x
    except (ValueError, np.linalg.LinAlgError):
        params = np.full(5, np.nan)
    if not np.all(np.isfinite(params)):
        return _linear(scores, mos, sign), "linear (the monotonic logistic fit did not converge)"

    def mapping(values):
        return logistic5((np.asarray(values, dtype=np.float64) - centre) / spread, *params)

    mapping.params = params  # type: ignore[attr-defined]
    return mapping, "logistic5 (monotonic)"


def map_scores(scores: np.ndarray, mos: np.ndarray, start: Optional[Sequence[float]] = None) -> Tuple[np.ndarray, str]:
    """Scores mapped onto the MOS scale (see fit_mapping), and which mapping was used."""
    mapping, name = fit_mapping(scores, mos, start)
    return mapping(scores), name


def _linear(scores: np.ndarray, mos: np.ndarray, sign: float) -> Callable[[np.ndarray], np.ndarray]:
    """Least-squares line, flat where its slope would not have `sign`'s sign."""
    if scores.std() == 0:
        return lambda values: np.full(np.shape(values), mos.mean())
    slope, intercept = np.polyfit(scores, mos, 1)
    if slope * sign < 0:
        slope, intercept = 0.0, float(mos.mean())
    return lambda values: slope * np.asarray(values, dtype=np.float64) + intercept


def correlations(scores, mos, start: Optional[Sequence[float]] = None) -> Dict[str, Union[float, int, str]]:
    """SRCC, KRCC, PLCC and RMSE of scores against MOS, with the pair count.

    SRCC and KRCC use the raw scores; PLCC and RMSE the mapped ones (the
    logistic fitted from `start`, see fit_mapping). Signs are kept: with
    DMOS (lower is better) correlations come out negative.
    """
    scores = np.asarray(scores, dtype=np.float64)
    mos = np.asarray(mos, dtype=np.float64)
    if scores.shape != mos.shape or scores.ndim != 1 or len(scores) < 3:
        raise ValueError(f"scores: expected matching 1-D arrays of at least 3 values, got {scores.shape} and {mos.shape}")
    mapped, mapping = map_scores(scores, mos, start)
    plcc = stats.pearsonr(mapped, mos)[0] if mapped.std() > 0 else float("nan")
    return {
        "pairs": int(len(scores)),
        "srcc": float(stats.spearmanr(scores, mos)[0]),
        "krcc": float(stats.kendalltau(scores, mos)[0]),
        "plcc": float(plcc),
        "rmse": float(np.sqrt(np.mean((mapped - mos) ** 2))),
        "mapping": mapping,
    }
