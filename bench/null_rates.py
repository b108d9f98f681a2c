"""How often the paired content bootstrap on |SRCC| calls two equally good
columns different at alpha 0.05, by the number of reference contents: the
figures of docs/evaluation.md's table of minimum contents.

`python -m bench.null_rates [SIMULATIONS]` (default 300; about 20 minutes
on 2 cores). Each simulated dataset has G contents of 5 pairs; the MOS, and
each column's error, carry a content effect (pairs of one content are not
independent); the two columns' errors have the same size.
"""

import sys

import numpy as np

from msds.evaluation import significance


def rejection_rate(contents: int, simulations: int, rng: np.random.Generator, per_content: int = 5,
                   resamples: int = 200) -> float:
    groups = np.repeat(np.arange(contents), per_content)
    rejected = 0
    for sim in range(simulations):
        quality = rng.normal(0, 1, contents * per_content)
        mos = quality + np.repeat(rng.normal(0, 0.5, contents), per_content)
        a = quality + np.repeat(rng.normal(0, 0.7, contents), per_content) + rng.normal(0, 0.7, len(quality))
        b = quality + np.repeat(rng.normal(0, 0.7, contents), per_content) + rng.normal(0, 0.7, len(quality))
        report = significance.bootstrap({"a": a, "b": b}, mos, groups, resamples, seed=sim, statistics=("srcc",))
        rejected += significance.paired_difference(report, "a", "b")["p_value"] < 0.05
    return rejected / simulations


if __name__ == "__main__":
    simulations = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    rng = np.random.default_rng(0)
    for contents in (6, 10, 20, 30):
        print(f"{contents} contents: {rejection_rate(contents, simulations, rng):.3f}", flush=True)
