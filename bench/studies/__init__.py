"""One-off studies, each its own command (``python -m bench.studies.NAME``): the checkpoint
A/B, the before/after picture, memory across hot reloads, the daemon's CPU split."""
