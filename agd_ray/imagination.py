"""Imagined windows -> RLlib `SingleAgentEpisode`s, and the policy/critic callables the world model guides with.

ALGORITHM.md section 4: one window is one episode. A window holds states s[0:H], actions a[0:H], rewards
r[0:H] and terminals d[0:H], where r[h], d[h] belong to the transition (s[h], a[h]) -> s[h+1]. With h* the
first predicted termination the episode is s[0..h*+1], a/r[0..h*], terminated=True (when h* = H-1 the
window holds no s[H]; the last state is repeated, harmless since a terminal state is never bootstrapped).
Without a termination it is s[0..H-1], a/r[0..H-2], truncated=True, so GAE bootstraps from V(s[H-1]).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO


def episode_cut(terminals: np.ndarray) -> tuple[int, bool]:
    """(number of transitions, terminated) of one window with terminals `d: [H]` (bool)."""
    horizon = len(terminals)
    hits = np.flatnonzero(np.asarray(terminals, dtype=bool))
    if len(hits):
        return int(hits[0]) + 1, True
    return horizon - 1, False


# the arrays of an imagined batch: the windows and the guiding policy's outputs at them
WINDOW_KEYS = ("observations", "actions", "rewards", "terminals", "action_logp", "action_dist_inputs")


@dataclass
class ImaginedBatch:
    """What imagination sends the driver: one worker's shard of a request, or the merged request (`merge`).

    windows: the finite windows only (`WINDOW_KEYS`: observations [n, H, D_s], actions [n, H, D_a], rewards and
    terminals [n, H], and the guiding policy's action_logp [n, H] and action_dist_inputs [n, H, 2 D_a] at them),
    in request order; a window with a NaN or inf anywhere is dropped where it was imagined and counted in
    `num_nonfinite`. weights_seq_no: the policy version that guided them (PPO's ratio starts there).
    metrics: what was measured while imagining (num_transitions = requested windows x (H - 1), imagine_s,
    transitions_per_s, delta, num_shards, and a resampling guide's per-unit gain sums or merged gain).
    """

    windows: dict
    weights_seq_no: int
    normalizer_version: int
    start_index: int = 0
    num_nonfinite: int = 0
    metrics: dict = field(default_factory=dict)
    finished_at: float = 0.0  # wall clock when the worker finished (the driver's transfer-time split)

    @classmethod
    def from_windows(cls, windows: dict, **fields) -> "ImaginedBatch":
        """A shard from all its imagined windows (numpy, `WINDOW_KEYS`): the non-finite ones dropped and counted."""
        arrays = {k: np.asarray(windows[k]) for k in WINDOW_KEYS}
        count = len(arrays["observations"])
        finite = np.ones(count, dtype=bool)
        for value in arrays.values():
            finite &= np.isfinite(value.astype(np.float64, copy=False)).reshape(count, -1).all(axis=1)
        kept = arrays if finite.all() else {k: v[finite] for k, v in arrays.items()}
        return cls(windows=kept, num_nonfinite=int(count - finite.sum()), **fields)

    @property
    def num_windows(self) -> int:
        return len(self.windows["observations"])

    @classmethod
    def merge(cls, shards: list["ImaginedBatch"]) -> "ImaginedBatch":
        """Shards in any order -> the request, in request order: windows concatenated, counts added, metrics
        combined (transitions/s of the whole request: its transitions over the slowest shard's time; a
        resampling guide's gain from every unit's sums, in request order, so any split gives the same gain)."""
        shards = sorted(shards, key=lambda shard: shard.start_index)
        for name in ("weights_seq_no", "normalizer_version"):
            values = [getattr(shard, name) for shard in shards]
            if len(set(values)) != 1:
                raise RuntimeError(f"imagination shards disagree on {name}: {values}")
        first = shards[0]
        windows = {k: np.concatenate([shard.windows[k] for shard in shards]) for k in WINDOW_KEYS}
        num_transitions = sum(shard.metrics["num_transitions"] for shard in shards)
        imagine_s = max(shard.metrics["imagine_s"] for shard in shards)
        metrics = {"num_transitions": num_transitions, "imagine_s": imagine_s,
                   "transitions_per_s": num_transitions / max(imagine_s, 1e-9),
                   "delta": first.metrics["delta"], "num_shards": len(shards)}
        if "resampling_gain_sums" in first.metrics:
            from agd_ray.world_model.diagnostics import gain_from_sums

            units = [unit for shard in shards for unit in shard.metrics["resampling_gain_sums"]]
            metrics.update(gain_from_sums({k: sum(unit[k] for unit in units) for k in units[0]}))
        for key in ("advantage_gain", "advantage_gain_sigma"):  # the twin-batch measurement: the first shard's
            if key in first.metrics:
                metrics[key] = first.metrics[key]
        return cls(windows=windows, weights_seq_no=first.weights_seq_no, normalizer_version=first.normalizer_version,
                   start_index=first.start_index, num_nonfinite=sum(shard.num_nonfinite for shard in shards),
                   metrics=metrics, finished_at=max(shard.finished_at for shard in shards))

    def to_episodes(self, observation_space=None, action_space=None) -> list[SingleAgentEpisode]:
        """One RLlib episode per window (`windows_to_episodes`)."""
        return windows_to_episodes(self.windows, weights_seq_no=self.weights_seq_no,
                                   observation_space=observation_space, action_space=action_space)


def windows_to_episodes(
    windows: dict,
    *,
    weights_seq_no: int,
    observation_space=None,
    action_space=None,
) -> list[SingleAgentEpisode]:
    """Imagined arrays -> one `SingleAgentEpisode` per window.

    windows: observations [B, H, D_s], actions [B, H, D_a], rewards [B, H], terminals [B, H] (bool),
    action_logp [B, H] and action_dist_inputs [B, H, 2 D_a] of the guiding policy version `weights_seq_no`
    (numpy arrays or torch tensors).
    """
    arrays = {k: _numpy(v) for k, v in windows.items()}
    observations, actions = arrays["observations"], arrays["actions"]  # [B, H, D_s], [B, H, D_a]
    rewards, terminals = arrays["rewards"], arrays["terminals"].astype(bool)  # [B, H]
    logp, dist_inputs = arrays["action_logp"], arrays["action_dist_inputs"]  # [B, H], [B, H, 2 D_a]
    episodes = []
    for b in range(observations.shape[0]):
        steps, terminated = episode_cut(terminals[b])
        obs = observations[b, : steps + 1]
        if len(obs) == steps:  # terminated at the window's last step: no s[H] in the window
            obs = np.concatenate([obs, obs[-1:]])
        episode = SingleAgentEpisode(
            observations=list(obs),
            actions=list(actions[b, :steps]),
            rewards=list(rewards[b, :steps].astype(np.float32)),
            extra_model_outputs={
                Columns.ACTION_LOGP: list(logp[b, :steps]),
                Columns.ACTION_DIST_INPUTS: list(dist_inputs[b, :steps]),
                WEIGHTS_SEQ_NO: [int(weights_seq_no)] * steps,
            },
            terminated=terminated,
            truncated=not terminated,
            len_lookback_buffer=0,
            observation_space=observation_space,
            action_space=action_space,
        )
        episodes.append(episode.to_numpy())
    return episodes


def _numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _flat_obs(observations: torch.Tensor) -> torch.Tensor:
    return observations.reshape(-1, observations.shape[-1])


def _actor_path(module):
    """(actor encoder, pi head) of an RLlib PPO module with separate actor and critic encoders, or None.

    RLlib's `forward_exploration` runs the whole encoder, critic included, to read the actor's output; the
    sampler calls the policy once per reverse step on every imagined state, and with PPO's default separate
    256 x 256 encoders half of that work was the critic's, thrown away (RESULTS.md, the imagination profile).
    RLlib's own `compute_values` takes the critic encoder alone the same way."""
    encoder, pi = getattr(module, "encoder", None), getattr(module, "pi", None)
    actor = getattr(encoder, "actor_encoder", None)
    config = getattr(encoder, "config", None)
    if actor is None or pi is None or getattr(config, "shared", True) or module.is_stateful():
        return None
    return actor, pi


def action_dist_inputs(module, observations: torch.Tensor) -> torch.Tensor:
    """The module's action-distribution inputs for `observations: [..., D_s]` -> [..., 2 D_a], without gradients
    as RLlib's `forward_exploration` computes them.

    For a PPO module with separate actor and critic encoders only the actor's layers run (`_actor_path`): the
    same values as `forward_exploration`'s, at half the cost."""
    from ray.rllib.core.models.base import ENCODER_OUT

    batch = {Columns.OBS: _flat_obs(observations)}
    path = _actor_path(module)
    if path is None:
        inputs = module.forward_exploration(batch)[Columns.ACTION_DIST_INPUTS]
    else:
        actor, pi = path
        with torch.no_grad():
            inputs = pi(actor(batch)[ENCODER_OUT])
    return inputs.reshape(*observations.shape[:-1], inputs.shape[-1])


def action_logp(module, dist_inputs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log pi(a | s) under the module's own action distribution class: [..., D_a] -> [...]."""
    dist_cls = module.get_exploration_action_dist_cls()
    flat = dist_cls.from_logits(dist_inputs.reshape(-1, dist_inputs.shape[-1]))
    return flat.logp(actions.reshape(-1, actions.shape[-1])).reshape(actions.shape[:-1])


def make_policy(module):
    """Callable observations [..., D_s] -> (mean [..., D_a], std [..., D_a]) of a Gaussian RLModule.

    For a Box action space RLlib's Gaussian inputs are [mean, log_std]; both are in the module's (normalised)
    action space, the space the world model's actions live in.
    """

    def policy(observations: torch.Tensor):
        inputs = action_dist_inputs(module, observations)
        mean, log_std = torch.chunk(inputs, 2, dim=-1)
        return mean, log_std.exp()

    return policy


def make_critic(module):
    """Callable observations [..., D_s] -> V(s) [...] from the module's value head (unnormalised states)."""

    def critic(observations: torch.Tensor) -> torch.Tensor:
        values = module.compute_values({Columns.OBS: _flat_obs(observations)})
        return values.reshape(observations.shape[:-1])

    return critic


def policy_outputs(module, observations, actions) -> dict:
    """`action_dist_inputs` [..., 2 D_a] and `action_logp` [...] of `actions` under `module` (no grad, numpy)."""
    device = next(iter(module.parameters())).device
    with torch.no_grad():
        obs = torch.as_tensor(_numpy(observations), dtype=torch.float32, device=device)
        act = torch.as_tensor(_numpy(actions), dtype=torch.float32, device=device)
        inputs = action_dist_inputs(module, obs)
        logp = action_logp(module, inputs, act)
    return {"action_dist_inputs": inputs.cpu().numpy(), "action_logp": logp.cpu().numpy()}


def action_z_std(actions, action_dist_inputs) -> float:
    """On-policy-ness of imagined pairs for the adaptive delta (ALGORITHM.md 3.2), from the policy outputs the
    episodes already carry: z = (a - mu) / sigma with [mu, log sigma] = action_dist_inputs; the mean over
    action dims of the (unbiased) std of z per dim, as `diagnostics.action_z_stats` computes it.

    actions: [..., D_a]; action_dist_inputs: [..., 2 D_a]. nan when there are fewer than two pairs.
    """
    from agd_ray.world_model.diagnostics import z_statistics

    act = torch.as_tensor(_numpy(actions), dtype=torch.float32)
    mean, log_std = torch.chunk(torch.as_tensor(_numpy(action_dist_inputs), dtype=torch.float32), 2, dim=-1)
    return z_statistics(act, mean, log_std.exp())["action_z_std"]
