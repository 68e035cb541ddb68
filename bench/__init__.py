"""artd's benchmarks: ``python -m bench [--quick] [--only NAME,...] [--out DIR]`` runs the suite.

Every figure is measured against a faithful copy of the post's loop run on the same files in
the same run, alternating (post, ours, post, ours, ...) so that background load on a shared
machine hits both alike. Results go to stdout and to ``OUT/results.md`` / ``results.json``;
docs/benchmarks.md records them. Benchmarks report; they never gate CI.

By role: ``bench.suite`` (the registered suite members), ``bench.art`` (the art benchmark,
also ``python -m bench.art``), ``bench.post`` (the blog post's loops, the baselines),
``bench.studies`` (one-off studies), ``bench.shared`` (helpers), bench/scripts/ (shell runs).
"""
