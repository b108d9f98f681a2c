"""The evaluation toolkit behind `msds eval` and `msds fit`: dataset readers,
scoring runs with their provenance, correlations, significance tests, fusion
fitting, the analysis report and its plots."""
