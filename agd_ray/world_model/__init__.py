"""The trajectory diffusion world model with policy and advantage guidance (ALGORITHM.md sections 1-3, 7)."""

from agd_ray.world_model.config import GuideConfig, WorldModelConfig
from agd_ray.world_model.model import WorldModel
from agd_ray.world_model.normalizer import NormalizerSnapshot, RunningStats

__all__ = ["GuideConfig", "NormalizerSnapshot", "RunningStats", "WorldModel", "WorldModelConfig"]
