"""Measuring a world model (ALGORITHM.md section 7): on-policy-ness, guidance effect, open-loop error, and
how imagined returns respond to the actions (`within_start_correlation`, ours).

Pure functions over imagined batches (the dict `WorldModel.imagine` returns) and real MuJoCo envs, plus
`collect_windows`, which cuts real windows with their simulator states (qpos, qvel) for tests and benches.
"""

from __future__ import annotations

import numpy as np
import torch

from agd_ray.world_model.config import GuideConfig
from agd_ray.world_model.guidance import Critic, Policy, n_step_advantage, window_advantages


@torch.no_grad()
def action_z_stats(out: dict, policy: Policy) -> dict:
    """On-policy-ness of imagined pairs (ALGORITHM.md 7, and 3.2's adaptive delta).

    z = (a - mu(s)) / sigma(s) over all imagined (s, a); action_z_mean is the mean of z over everything,
    action_z_std the mean over action dims of the (unbiased) std of z per dim. Ideal: 0 and 1.
    `WorldModel.adapt_policy_step` adapts delta from these same statistics.
    """
    mean, std = policy(torch.as_tensor(out["observations"]))  # [B, H, D_a] each
    return z_statistics(torch.as_tensor(out["actions"]), mean, std)


def z_statistics(actions: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> dict:
    """z = (a - mu) / sigma over all pairs (actions, mean, std: [..., D_a]): action_z_mean, and action_z_std,
    the mean over action dims of the (unbiased) std of z per dim; nan with fewer than two pairs."""
    z = ((actions - mean) / std).reshape(-1, actions.shape[-1])  # [N, D_a]
    if z.shape[0] < 2:
        return {"action_z_mean": z.mean().item() if z.numel() else float("nan"), "action_z_std": float("nan")}
    return {"action_z_mean": z.mean().item(), "action_z_std": z.std(dim=0).mean().item()}


def gain_in_sigma(guided, unguided) -> dict:
    """The guide's effect in units of the unguided spread (ALGORITHM.md 7): mean advantage of guided windows
    minus that of unguided ones, and that difference over the unguided windows' standard deviation.
    guided: [B], unguided: [M] advantages (M may differ from B, e.g. K candidates per start)."""
    guided = np.asarray(torch.as_tensor(guided).detach().cpu(), np.float64).ravel()
    unguided = np.asarray(torch.as_tensor(unguided).detach().cpu(), np.float64).ravel()
    gain = float(guided.mean() - unguided.mean())
    spread = float(unguided.std(ddof=1)) if unguided.size > 1 else float("nan")
    return {"advantage_guided": float(guided.mean()), "advantage_unguided": float(unguided.mean()),
            "advantage_gain": gain, "advantage_gain_sigma": gain / spread if spread > 0 else float("nan")}


@torch.no_grad()
def advantage_gain(wm, start_obs, *, policy: Policy, critic: Critic, guide: GuideConfig, seed: int,
                   gamma: float = 0.99) -> dict:
    """Guidance effect (ALGORITHM.md 7 and 3.3): mean n-step advantage of windows imagined with `guide`
    minus that of unguided windows (GuideConfig(kind="none")) from the same start states and noise, in the
    critic's units and in units of the unguided windows' standard deviation (`gain_in_sigma`).

    The n-step advantage is `guidance.window_advantages` (sum_{h<H-1} gamma^h r[h] + gamma^(H-1) V(s[H-1]) -
    V(s[0]), cut at a predicted termination), with the critic on unnormalised states. A resampling guide is
    compared with its own unguided candidates (K per start state, the same reverse processes).
    start_obs: [B, D_s]. Returns guidance/advantage_guided, _unguided, _gain and _gain_sigma.
    """

    def imagine(config: GuideConfig) -> dict:
        generator = torch.Generator(device=wm.device).manual_seed(seed)
        return wm.imagine(start_obs, policy=policy, critic=critic, guide=config, generator=generator)

    guided = imagine(guide)
    unguided = guided.get("candidates") or imagine(GuideConfig(kind="none"))
    gain = gain_in_sigma(window_advantages(guided, critic, gamma), window_advantages(unguided, critic, gamma))
    return {f"guidance/{k}": v for k, v in gain.items()}


def resampling_gain_sums(candidate_advantages: torch.Tensor, selected: torch.Tensor) -> dict:
    """What a batch of resampled windows adds to the running guidance-effect sums (`gain_from_sums`):
    candidate_advantages [B, K] of the unguided candidates, selected [B] the kept ones. Sums, so that the shards of
    a request split across workers combine exactly."""
    adv = candidate_advantages.detach().double().cpu()
    kept = adv[torch.arange(adv.shape[0]), selected.cpu()]  # [B]
    return {"kept_n": float(adv.shape[0]), "kept_sum": float(kept.sum()), "candidates_n": float(adv.numel()),
            "candidates_sum": float(adv.sum()), "candidates_sq_sum": float((adv**2).sum())}


def gain_from_sums(sums: dict) -> dict:
    """advantage_gain and advantage_gain_sigma (as `gain_in_sigma`) from `resampling_gain_sums` added up: the
    kept windows' mean advantage against all candidates' (the unguided windows from the same start states)."""
    n, m = sums["kept_n"], sums["candidates_n"]
    mean_all = sums["candidates_sum"] / m
    var = (sums["candidates_sq_sum"] - m * mean_all**2) / max(m - 1.0, 1.0)
    gain = sums["kept_sum"] / n - mean_all
    return {"advantage_gain": gain, "advantage_gain_sigma": gain / var**0.5 if var > 0 else float("nan")}


def real_window_advantages(env, qpos, qvel, actions, start_obs, critic: Critic, gamma: float,
                           device="cpu") -> dict:
    """The n-step advantage of what the simulator does with imagined actions (ALGORITHM.md 7, real guidance effect).

    Each window's actions [B, H, D_a] (env action space) are replayed from its true start state (qpos [B, n_q],
    qvel [B, n_v]) by `simulate_actions`; the real states s[0] = start_obs[b], s[h+1] = the observation after step
    h, the real rewards and terminations give `n_step_advantage` with the same critic. Returns advantages [B]
    (torch, float64) and the real states [B, H, D_s] (numpy)."""
    sim = simulate_actions(env, qpos, qvel, np.asarray(actions, np.float64)[:, None])
    start = np.asarray(torch.as_tensor(start_obs).cpu(), np.float64)[:, None]  # [B, 1, D_s]
    states = np.concatenate([start, sim["next_observations"][:, 0, :-1]], axis=1)  # [B, H, D_s]
    values = critic(torch.as_tensor(states, dtype=torch.float32, device=device)).double().cpu()  # [B, H]
    rewards = torch.as_tensor(sim["rewards"][:, 0])
    continues = 1.0 - torch.as_tensor(sim["terminals"][:, 0])
    return {"advantages": n_step_advantage(rewards, values, continues, gamma), "states": states}


def _make_env(env):
    import gymnasium as gym

    return gym.make(env) if isinstance(env, str) else env


def open_loop_error(env, qpos, qvel, actions, imagined_obs) -> np.ndarray:
    """Open-loop error of imagined windows against the simulator (ALGORITHM.md 7).

    For each window b: reset the env, restore the true start state with `set_state(qpos[b], qvel[b])`,
    replay the imagined actions (clipped to the action space) and compare the simulator's observations with
    the imagined ones. Step 0 compares the start observation. A window is compared up to and including the
    observation of the step at which the env terminates (or truncates), not after.

    env: a MuJoCo gymnasium env or its id. qpos: [B, n_q], qvel: [B, n_v], actions: [B, H, D_a],
    imagined_obs: [B, H, D_s]. Returns the MSE per step (mean over D_s, unnormalised), averaged over the
    windows still compared at that step: [H] (NaN where no window is).
    """
    env = _make_env(env)
    qpos, qvel = np.asarray(qpos, np.float64), np.asarray(qvel, np.float64)
    actions = np.asarray(torch.as_tensor(actions).cpu(), np.float64)  # [B, H, D_a]
    imagined = np.asarray(torch.as_tensor(imagined_obs).cpu(), np.float64)  # [B, H, D_s]
    batch, horizon = imagined.shape[:2]
    low, high = env.action_space.low, env.action_space.high
    sq_error = np.zeros((batch, horizon))  # [B, H]
    compared = np.zeros((batch, horizon), dtype=bool)  # [B, H]
    for b in range(batch):
        env.reset(seed=b)
        env.unwrapped.set_state(qpos[b], qvel[b])
        obs = env.unwrapped._get_obs()  # the observation of the restored state (what reset would return)
        stopped = False
        for h in range(horizon):
            sq_error[b, h] = np.mean((obs - imagined[b, h]) ** 2)
            compared[b, h] = True
            if stopped or h == horizon - 1:
                break
            obs, _, terminated, truncated, _ = env.step(np.clip(actions[b, h], low, high).astype(np.float32))
            stopped = terminated or truncated
    counts = compared.sum(axis=0)  # [H]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, (sq_error * compared).sum(axis=0) / counts, np.nan)


@torch.no_grad()
def imagine_with_actions(wm, start_obs, actions, *, seed: int = 0) -> dict:
    """The world model's windows from `start_obs` [B, D_s] conditioned on given actions [B, H, D_a] (the model's
    action space): the "reparam" sampler with a "policy" whose mean is those actions and whose std is 1e-6, so
    the denoiser sees the given actions at every reverse step, as in training (the score rule would add its
    posterior noise to them). Returns `WorldModel.imagine`'s dict; `wm` is unchanged."""
    given = torch.as_tensor(np.asarray(actions), dtype=torch.float32, device=wm.device)

    def replay(states):
        return given.to(states.dtype), torch.full_like(given, 1e-6, dtype=states.dtype)

    return wm.imagine(start_obs, policy=replay, guide=GuideConfig(kind="none"), policy_guidance="reparam",
                      generator=torch.Generator(device=wm.device).manual_seed(int(seed)))


def simulate_actions(env, qpos, qvel, actions) -> dict:
    """The simulator replaying action sequences from true start states.

    qpos: [S, n_q], qvel: [S, n_v]; actions: [S, K, H, D_a] in the env's action space (clipped to it): K
    sequences per start. Returns rewards [S, K, H], terminals [S, K, H] (1 from the step the env terminates on)
    and next_observations [S, K, H, D_s] (the observation after each step); after a termination (or truncation)
    rewards are 0 and the last observation is repeated, as in a padded window (ALGORITHM.md 1).
    """
    env = _make_env(env)
    actions = np.asarray(actions, np.float64)
    low, high = env.action_space.low, env.action_space.high
    starts, sequences, horizon = actions.shape[:3]
    rewards = np.zeros((starts, sequences, horizon))
    terminals = np.zeros((starts, sequences, horizon))
    next_obs = np.zeros((starts, sequences, horizon, env.observation_space.shape[0]))
    for s in range(starts):
        for k in range(sequences):
            env.reset(seed=s)
            env.unwrapped.set_state(np.asarray(qpos[s], np.float64), np.asarray(qvel[s], np.float64))
            for h in range(horizon):
                obs, reward, terminated, truncated, _ = env.step(
                    np.clip(actions[s, k, h], low, high).astype(np.float32))
                rewards[s, k, h], next_obs[s, k, h:] = reward, obs
                terminals[s, k, h:] = float(terminated)
                if terminated or truncated:
                    break
    return {"rewards": rewards, "terminals": terminals, "next_observations": next_obs}


def _within(x: np.ndarray) -> np.ndarray:
    """[S, K, ...] minus the mean over K per start."""
    return x - x.mean(axis=1, keepdims=True)


def within_start_r2(imagined, simulated) -> np.ndarray:
    """R^2 of the imagined against the simulated quantity [S, K, D] after centring both per start state:
    1 - sum((d_im - d_sim)^2) / sum(d_sim^2) per last-axis entry [D] (nan where the simulator's does not vary).
    1: the model moves it with the actions as the simulator does; 0: as well as not moving it at all."""
    a, b = _within(np.asarray(imagined, np.float64)), _within(np.asarray(simulated, np.float64))
    total = (b**2).sum(axis=(0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 1e-12, 1.0 - ((a - b) ** 2).sum(axis=(0, 1)) / np.where(total > 1e-12, total, 1.0),
                        np.nan)


def within_start_correlation(imagined, simulated) -> float:
    """How well imagined returns follow the actions, with the start state's own effect removed.

    imagined, simulated: [S, K], the returns of K action sequences from each of S start states. Both are
    centred per start state (minus the mean over its K sequences), then correlated over all S x K: 1 when
    the model ranks and scales the action sequences of a start as the simulator does (whatever its error
    common to the start), about 0 when its returns do not depend on the actions. This is the signal a policy
    gradient takes from imagined windows; the plain correlation is dominated by the start states.
    Returns nan when either side does not vary within starts.
    """
    imagined, simulated = np.asarray(imagined, np.float64), np.asarray(simulated, np.float64)
    if imagined.shape != simulated.shape or imagined.ndim != 2:
        raise ValueError(f"imagined {imagined.shape} and simulated {simulated.shape} must both be [S, K]")
    a, b = _within(imagined).ravel(), _within(simulated).ravel()
    norm = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / norm) if norm > 0 else float("nan")


def guidance_effect(wm, env, windows: dict, *, policy: Policy, critic: Critic, guide: GuideConfig, seed: int,
                    to_env_actions=None) -> dict:
    """World-model quality and the guide's effect, imagined and real, on real windows (ALGORITHM.md 7).

    From the windows' start states (observations [B, H, D_s], qpos [B, n_q], qvel [B, n_v]): windows imagined
    with `guide` ("guided") and without state guidance ("unguided", the same seed; a resampling guide's unguided
    windows are its own K candidates per start state). Each is replayed open loop in the simulator from its true
    start state: the open-loop MSE by step (`open_loop_error`), the action z statistics, and the n-step advantage
    of the imagined windows (`guidance.window_advantages`) and of what the simulator does with the same actions
    (`real_window_advantages`), the same critic on both. to_env_actions: maps the model's actions onto the env's
    action space (e.g. RLlib's unsquash), or None when they already are.

    Returns {"metrics": flat scalars `quality/open_loop_mse_<guided|unguided>` (and `..._by_step/h<h>`),
    `quality/action_z_mean_*`, `quality/action_z_std_*` and, for an enabled guide, `quality/advantage_gain_sigma`,
    `quality/real_advantage_gain_sigma` and their parts (`gain_in_sigma`); "imagined": the two imagined dicts;
    "real_states": the simulator's states [N, H, D_s] for each}.
    """
    env = _make_env(env)
    start = np.array(windows["observations"][:, 0], dtype=np.float32)
    qpos, qvel = np.asarray(windows["qpos"]), np.asarray(windows["qvel"])
    guided = wm.imagine(start, policy=policy, critic=critic, guide=guide,
                        generator=torch.Generator(device=wm.device).manual_seed(int(seed)))
    if "candidates" in guided:
        unguided = guided["candidates"]
    else:
        unguided = wm.imagine(start, policy=policy, critic=critic, guide=GuideConfig(kind="none"),
                              generator=torch.Generator(device=wm.device).manual_seed(int(seed)))
    metrics, imagined_adv, real_adv, real_states = {}, {}, {}, {}
    for name, out in (("guided", guided), ("unguided", unguided)):
        repeats = len(out["observations"]) // len(start)  # K for a resampling guide's candidates, else 1
        actions = out["actions"].detach().cpu().numpy().astype(np.float64)  # [N, H, D_a]
        if to_env_actions is not None:
            actions = to_env_actions(actions)
        pos, vel = np.repeat(qpos, repeats, axis=0), np.repeat(qvel, repeats, axis=0)
        error = open_loop_error(env, pos, vel, actions, out["observations"])  # [H]
        for h in range(1, len(error)):
            metrics[f"quality/open_loop_mse_{name}_by_step/h{h}"] = float(error[h])
        metrics[f"quality/open_loop_mse_{name}"] = float(np.nanmean(error[1:]))
        z = action_z_stats(out, policy)
        metrics[f"quality/action_z_mean_{name}"] = z["action_z_mean"]
        metrics[f"quality/action_z_std_{name}"] = z["action_z_std"]
        imagined_adv[name] = window_advantages(out, critic, guide.gamma)
        real = real_window_advantages(env, pos, vel, actions, out["observations"][:, 0].cpu(), critic, guide.gamma,
                                      device=wm.device)
        real_adv[name], real_states[name] = real["advantages"], real["states"]
    if guide.enabled:
        for prefix, values in (("", imagined_adv), ("real_", real_adv)):
            for key, value in gain_in_sigma(values["guided"], values["unguided"]).items():
                metrics[f"quality/{prefix}{key}"] = value
    return {"metrics": metrics, "imagined": {"guided": guided, "unguided": unguided}, "real_states": real_states}


def collect_windows(env_id: str, num_windows: int, horizon: int, seed: int, *, policy=None,
                    max_warmup_steps: int = 20) -> dict:
    """Real windows with their start simulator states, for tests and benches (ALGORITHM.md 1 and 7).

    Each window: reset with seed `seed + index`, take a random number (< max_warmup_steps) of actions so that
    start states vary, record (qpos, qvel), then `horizon` steps. Actions come from `policy(obs) -> action`
    (numpy) or uniformly from the action space (seeded). After a termination the window is padded as in
    ALGORITHM.md 1: the last observation and action repeated, reward 0, terminal 1. A window that a time
    limit would cut is dropped and another drawn.
    Returns numpy arrays observations [B, H, D_s], actions [B, H, D_a], rewards [B, H], terminals [B, H],
    qpos [B, n_q], qvel [B, n_v].
    """
    env = _make_env(env_id)
    rng = np.random.default_rng(seed)
    env.action_space.seed(seed)
    act = policy or (lambda _obs: env.action_space.sample())
    keys = ("observations", "actions", "rewards", "terminals", "qpos", "qvel")
    data = {k: [] for k in keys}
    index = 0
    while len(data["qpos"]) < num_windows:
        obs, _ = env.reset(seed=seed + index)
        index += 1
        ok = True
        for _ in range(int(rng.integers(max_warmup_steps))):
            obs, _, terminated, truncated, _ = env.step(act(obs))
            if terminated or truncated:
                ok = False
                break
        if not ok:
            continue  # the warm-up ended the episode: draw another start
        qpos, qvel = env.unwrapped.data.qpos.copy(), env.unwrapped.data.qvel.copy()
        observations, actions, rewards, terminals = [], [], [], []
        done = False
        for _ in range(horizon):
            action = np.asarray(act(obs), dtype=np.float32) if not done else actions[-1]
            observations.append(obs)
            actions.append(action)
            if done:
                rewards.append(0.0)
                terminals.append(1.0)
                continue
            obs, reward, terminated, truncated, _ = env.step(action)
            rewards.append(float(reward))
            terminals.append(float(terminated))
            done = terminated or truncated
            if truncated and not terminated:
                break  # a time-limit cut is not a termination: draw another window instead of padding
        if len(observations) < horizon:
            continue
        for key, value in zip(keys, (observations, actions, rewards, terminals, qpos, qvel), strict=True):
            data[key].append(np.asarray(value, dtype=np.float64))
    return {k: np.stack(v) for k, v in data.items()}
