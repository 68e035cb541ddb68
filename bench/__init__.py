"""artd's benchmark suite: ``python -m bench [--quick] [--only NAME,...] [--out DIR]``.

Every figure is measured against a faithful copy of the seed's loop run on the same files in
the same run, alternating (seed, ours, seed, ours, ...) so that background load on a shared
machine hits both alike. Results go to stdout and to ``OUT/results.md`` / ``results.json``;
docs/benchmarks.md records them. Benchmarks report; they never gate CI.
"""
