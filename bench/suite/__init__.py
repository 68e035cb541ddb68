"""The suite's members, one module per family that ``python -m bench`` runs (bench/__main__.py
holds the registry); each has ``bench(run)``, which measures and reports into the run."""
