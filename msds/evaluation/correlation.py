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


# Iterations (function evaluations) each start of the logistic fit may take.
# Nearly linear data drive it toward a degenerate corner (a vanishing or
# endless logistic term) that it approaches without converging; every point
# inside the bounds is a monotonic map, so the best one found within this
# budget is used.
FIT_EVALUATIONS = 300

# Starts of the logistic fit, on standardised scores: the inflection b3 at
# each of these quantiles of the scores, with each of these steepnesses b2
# (and the generic start, b3 = 0 and b2 = 1). One start from the middle
# stalls near a straight line when the scores crowd at one end (similarity
# scores near 1 with a long tail) and the opinion scores saturate: the bend
# then lies in the tail, where a start at the mean never looks.
START_QUANTILES = (0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98)
START_STEEPNESS = (0.5, 2.0, 8.0, 32.0)


def fit_mapping(scores: np.ndarray, mos: np.ndarray,
                start: Optional[Sequence[float]] = None) -> Tuple[Callable[[np.ndarray], np.ndarray], str]:
    """The monotonic mapping of scores onto the MOS scale, and its name.

    The five-parameter logistic is fitted as a monotonic map in the direction
    of the rank correlation (SRCC), as the field reads it: with b2 >= 0 (the
    logistic term is unchanged when b1 and b2 both change sign), b1 and the
    linear term b4 take the sign of the SRCC, so the slope b1 b2 s (1 - s) +
    b4 never changes sign. It is fitted by bounded least squares on
    standardised scores (MSDS scores crowd near 1, which makes the raw fit
    ill-conditioned) from every start of START_QUANTILES x START_STEEPNESS
    and the generic one, keeping the smallest squared error; given `start`
    (parameters on the standardised scale, as the returned mapping's
    `params` holds them; the bootstrap starts each resample from the full
    sample's), from that one alone. A straight line sloping the same way
    (flat if least squares would slope the other way) takes the logistic's
    place with fewer than 6 pairs, when no fit ends in finite parameters, and
    whenever its PLCC is higher: the line is a monotonic map too, so the
    result is never worse than it. The returned function maps any scores, so
    a plot can draw the curve.
    """
    scores = np.asarray(scores, dtype=np.float64)
    mos = np.asarray(mos, dtype=np.float64)
    key = None if start is not None else (scores.tobytes(), mos.tobytes())
    if key in _FITTED:  # a report fits the same columns several times (correlations, residuals, plot)
        return _FITTED[key]
    fitted = _fit_mapping(scores, mos, start)
    if key is not None:
        if len(_FITTED) >= 32:
            _FITTED.pop(next(iter(_FITTED)))
        _FITTED[key] = fitted
    return fitted


_FITTED: Dict[Tuple[bytes, bytes], Tuple[Callable[[np.ndarray], np.ndarray], str]] = {}


def _fit_mapping(scores: np.ndarray, mos: np.ndarray,
                 start: Optional[Sequence[float]]) -> Tuple[Callable[[np.ndarray], np.ndarray], str]:
    spread = scores.std()
    sign = 1.0 if spread == 0 or stats.spearmanr(scores, mos)[0] >= 0 else -1.0
    line = _linear(scores, mos, sign)
    if len(scores) < 6 or spread == 0:
        return line, "linear (too few pairs or constant scores for the logistic)"
    centre = scores.mean()
    z = (scores - centre) / spread
    signed = (0.0, np.inf) if sign > 0 else (-np.inf, 0.0)
    lower, upper = zip(signed, (0.0, np.inf), (-np.inf, np.inf), signed, (-np.inf, np.inf))
    height, level = sign * float(np.ptp(mos)), float(mos.mean())
    if start is None:
        inflections = [0.0, *np.quantile(z, START_QUANTILES)]
        steepness = [1.0, *START_STEEPNESS]
        starts = [[height, 1.0, 0.0, 0.0, level]]
        starts += [[height, b2, b3, 0.0, level] for b3 in inflections[1:] for b2 in steepness[1:]]
    else:
        starts = [list(start)]
    best, best_error = None, np.inf
    for first in starts:
        try:
            result = optimize.least_squares(lambda p: logistic5(z, *p) - mos, np.clip(first, lower, upper),
                                            bounds=(lower, upper), jac=lambda p: logistic5_jacobian(z, *p),
                                            max_nfev=FIT_EVALUATIONS)
        except (ValueError, np.linalg.LinAlgError):
            continue
        error = float(np.sum((logistic5(z, *result.x) - mos) ** 2))
        if np.all(np.isfinite(result.x)) and error < best_error:
            best, best_error = result.x, error
    if best is None:
        return line, "linear (the monotonic logistic fit did not converge)"
    params = best

    def mapping(values):
        return logistic5((np.asarray(values, dtype=np.float64) - centre) / spread, *params)

    mapping.params = params  # type: ignore[attr-defined]
    if _pearson(line(scores), mos) > _pearson(mapping(scores), mos):
        return line, "linear (a straight line fits better than the logistic)"
    return mapping, "logistic5 (monotonic)"


def _pearson(mapped: np.ndarray, mos: np.ndarray) -> float:
    """Pearson's correlation, -inf for a constant mapping (never preferred)."""
    return float(stats.pearsonr(mapped, mos)[0]) if np.std(mapped) > 0 else -np.inf


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
