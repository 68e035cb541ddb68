"""Running a checkpoint: the engine with its errors, samplers, the img2img path, batching
and devices."""
