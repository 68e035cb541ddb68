"""Diffusion: the noise schedule and its parameterisation, the SDEdit/DDIM sampler, and
images from noise."""
