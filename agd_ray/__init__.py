"""agd-ray: advantage-guided trajectory diffusion world models for model-based RL, distributed on Ray."""

__version__ = "0.1.0"

__all__ = ["AGD", "AGDConfig"]


def __getattr__(name):
    # Lazy: `import agd_ray` (e.g. the CLI validating its arguments) must not import Ray or torch.
    if name == "AGD":
        from agd_ray.algorithm import AGD

        return AGD
    if name == "AGDConfig":
        from agd_ray.config import AGDConfig

        return AGDConfig
    raise AttributeError(f"module 'agd_ray' has no attribute {name!r}")
