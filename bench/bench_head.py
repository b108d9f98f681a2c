"""Head forward benchmarks (see README, "Benchmarks")."""
