"""agd-ray: advantage-guided trajectory diffusion world models for model-based RL, distributed on Ray."""

__version__ = "0.1.0"
