"""The trainer's parts; ``python -m core.train`` (core/train.py) runs them top to bottom.

- ``settings``: TrainSettings (the post's recipe as defaults) and the flags built from it.
- ``distributed``: who this process is under torchrun, and how ranks share work.
- ``loaders``: the prepared data set (decoded on rank 0) and each rank's loaders.
- ``learner``: the network, optimizer, schedule and mixed precision; restored on resume.
- ``run_folder``: everything a run leaves on disk; silent on ranks other than 0.
- ``state``: the resume state (``last.pt``), RNGs included.
- ``pictures``: the loss curves and sample grids, as PNG.
- ``style``: style transfer's parts: the collection's Gram target, the per-step style draw,
  the style validation figure.

What differs between objectives (inputs, loss, figure, samples, metadata) is each
objective's, in ``core.objectives``.
- ``evaluate``: batches onto the device in a checkpoint's image space; validation metrics.
- ``gate``: the promotion gate that guards the served model.
"""
