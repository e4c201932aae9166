"""The small RLlib PPO module spec the world-model tests guide with (a sibling module of the tests: tests/ is on
sys.path through tests/conftest.py)."""

import gymnasium as gym
import numpy as np


def tiny_module_spec(obs_dim: int, act_dim: int, **model_config):
    """PPO's RLModuleSpec (policy and critic, 16x16 MLPs) for a Box observation of `obs_dim` and a Box action in
    [-1, 1]^act_dim, full (not inference-only), with its spaces set so that `spec.build()` needs nothing else.
    `model_config`: more of RLlib's model settings (e.g. vf_share_layers=True)."""
    from ray.rllib.algorithms.ppo import PPOConfig

    obs_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, (act_dim,), np.float32)
    spec = PPOConfig().rl_module(model_config={"fcnet_hiddens": [16, 16], **model_config}).get_rl_module_spec(
        spaces={"default_policy": (obs_space, act_space)}, inference_only=False)
    spec.observation_space, spec.action_space = obs_space, act_space
    return spec
