"""The blog post's baselines: its inference and training loops, copied faithfully (docs/post.md).

"Post" is the project's word for the blog post the network came from. ``bench.post.loop`` and
``bench.post.train`` run as subprocesses (``bench.post.run``), the suite's reference figures.
"""
