"""Is imagination consistent with the simulator? A checkpoint's world model, policy and replay, side by side.

From one checkpoint (an `agd-ray train` OUTPUT/checkpoint or a Tune trial's checkpoint_NNNNNN), on real windows
sampled from its replay, with MuJoCo restored to each window's start state:
1. the world model conditioned on the windows' own (executed) actions: state MSE by step against the real
   windows, next to the "no change" baseline (s[h] = s[0]) - does the model know the dynamics?
2. guided imagination (the checkpoint's guide off: PolyGRAD actions) at several policy-step sizes delta: the
   action z std at the returned states (1 = on-policy), how often the imagined windows terminate (by the
   diffused terminal channel, and by the task's own rule on the imagined states), how often the
   simulator terminates when it replays the imagined actions open loop, the open-loop state MSE
   (`diagnostics.open_loop_error`) - are the imagined actions and states a trajectory the env would produce?
   The same with policy_guidance="reparam" (actions mu + sigma eps at the predicted states, exactly on-policy)
   and "causal" (the window built one transition at a time, each action at its committed state).
3. the policy run closed loop in the simulator from the same start states, with its mean action and with its own
   samples (`SimulatorImagination`, what `imagination.source="simulator"` feeds PPO): how often it terminates.
4. the model conditioned on K uniform action sequences from each of S start states, against the simulator
   replaying them: the within-start correlation of the returns (`diagnostics.within_start_correlation`) over
   the first 1..H-1 steps - do imagined returns follow the actions, the signal PPO takes from them? - and the
   within-start R^2 of the first imagined state by dimension (`diagnostics.within_start_r2`): which parts of
   the state the model moves with the action as the simulator does.

    OMP_NUM_THREADS=1 .venv/bin/python bench/consistency.py CHECKPOINT [--env InvertedPendulum-v5] [--windows 128]

Prints a table and writes bench/out/consistency.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from a checkout without install

import numpy as np  # noqa: E402
import torch  # noqa: E402


def load(checkpoint: Path):
    """(world model, policy module, replay buffer) of a checkpoint, without Ray."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    from agd_ray.replay.buffer import ReplayBuffer
    from agd_ray.world_model import WorldModel, WorldModelConfig

    state = torch.load(checkpoint / "agd" / "world_model.pt", map_location="cpu", weights_only=True)["model"]
    config = WorldModelConfig(**state["config"])
    if state.get("return_model") is None:
        config = config.replace(return_model_hidden=0)
    model = WorldModel(*state["dims"], config, device="cpu")
    model.load_state_dict(state)
    module = RLModule.from_checkpoint(str((checkpoint / "learner_group" / "learner" / "rl_module" /
                                           "default_policy").resolve()))
    module.eval()
    return model, module, ReplayBuffer.load(checkpoint / "agd" / "replay")


def _env_of(checkpoint: Path) -> str | None:
    params = checkpoint.parent / "params.json"  # a Tune trial's checkpoint
    if params.is_file():
        return json.loads(params.read_text()).get("env")
    config = checkpoint.parent / "config.json"  # an `agd-ray train` output
    return json.loads(config.read_text()).get("env") if config.is_file() else None


def open_checkpoint(checkpoint, env: str | None, bench: str):
    """(env id, world model, policy module, replay buffer) of a checkpoint for a bench named `bench`; the env from
    `env` or else the run's params.json/config.json. None, after one line on stderr, when neither names one."""
    checkpoint = Path(checkpoint)
    env_id = env or _env_of(checkpoint)
    if env_id is None:
        print(f"{bench}: error: --env is needed (no params.json or config.json beside the checkpoint)",
              file=sys.stderr)
        return None
    return (env_id, *load(checkpoint))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint directory with agd/ (train's OUTPUT/checkpoint, a trial's)")
    parser.add_argument("--env", default=None, help="MuJoCo task id (default: from the run's params/config)")
    parser.add_argument("--windows", type=int, default=128)
    parser.add_argument("--deltas", type=float, nargs="+", default=[0.005, 0.05, 1.0])
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--response-starts", type=int, default=24, help="start states of the action-response check")
    parser.add_argument("--response-sequences", type=int, default=8, help="uniform action sequences per start")
    parser.add_argument("--out", default="bench/out/consistency.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import gymnasium as gym
    from ray.rllib.utils.spaces.space_utils import unsquash_action

    from agd_ray.envs.termination import terminal_rule, window_terminals
    from agd_ray.imagination import make_critic, make_policy
    from agd_ray.world_model import GuideConfig
    from agd_ray.world_model.diagnostics import (
        imagine_with_actions,
        open_loop_error,
        simulate_actions,
        within_start_correlation,
        within_start_r2,
    )

    checkpoint = Path(args.checkpoint)
    opened = open_checkpoint(checkpoint, args.env, "consistency")
    if opened is None:
        return 2
    env_id, model, module, replay = opened
    policy, critic = make_policy(module), make_critic(module)
    env = gym.make(env_id)
    horizon = model.config.horizon
    real = replay.sample_windows(args.windows, horizon, rng=np.random.default_rng(args.seed))
    alive = real["terminals"].max(axis=1) == 0  # windows without a termination: compared state by state
    result = {"checkpoint": str(checkpoint), "env": env_id, "windows": args.windows, "horizon": horizon}

    # 1. conditioned on the windows' own actions
    out = imagine_with_actions(model, real["observations"][:, 0], real["actions"], seed=0)
    log_delta = model.log_delta
    conditioned = ((out["observations"].numpy() - real["observations"]) ** 2)[alive].mean(axis=(0, 2))
    no_change = ((real["observations"] - real["observations"][:, :1]) ** 2)[alive].mean(axis=(0, 2))
    result["conditioned_mse_by_step"] = conditioned[1:].round(4).tolist()
    result["no_change_mse_by_step"] = no_change[1:].round(4).tolist()
    print(f"{env_id}, H={horizon}, {args.windows} replay windows ({int(alive.sum())} without a termination)")
    print(f"1. model conditioned on the executed actions: state MSE mean {conditioned[1:].mean():.4f} "
          f"(no-change baseline {no_change[1:].mean():.4f})")

    # 3. the policy closed loop
    closed = np.zeros(args.windows, dtype=bool)
    for b in range(args.windows):
        env.reset(seed=b)
        env.unwrapped.set_state(real["qpos"][b], real["qvel"][b])
        obs = env.unwrapped._get_obs()
        for _ in range(horizon - 1):
            mean, _ = policy(torch.as_tensor(obs, dtype=torch.float32)[None])
            obs, _, terminated, truncated, _ = env.step(
                unsquash_action(mean[0].detach().numpy().astype(np.float64), env.action_space).astype(np.float32))
            if terminated:
                closed[b] = True
            if terminated or truncated:
                break
    result["policy_closed_loop_terminates"] = float(closed.mean())

    from agd_ray.world_model.simulator import SimulatorImagination

    simulator = SimulatorImagination(env_id, horizon, action_bound=model.config.action_bound)
    sampled = simulator.imagine(real["observations"][:, 0], policy=policy, qpos=real["qpos"], qvel=real["qvel"],
                                generator=torch.Generator().manual_seed(0))
    result["policy_samples_closed_loop_terminates"] = float(sampled["terminals"].any(1).float().mean())

    # 2. policy-guided imagination at several delta, then with the reparameterised policy guidance
    rows = []
    rule = terminal_rule(env_id)
    print(f"{'guidance':>16} {'z std':>6} {'imagined term':>13} {'(env rule)':>10} "
          f"{'sim term (imagined actions)':>27} {'open-loop MSE':>13}")
    for mode, delta in [*(("score", d) for d in [math.exp(log_delta), *args.deltas]), ("reparam", None),
                        ("causal", None)]:
        model.log_delta = math.log(delta) if delta is not None else log_delta
        out = model.imagine(real["observations"][:, 0], policy=policy, critic=critic, guide=GuideConfig(kind="none"),
                            generator=torch.Generator().manual_seed(0), policy_guidance=mode)
        mean, std = policy(out["observations"])
        z_std = float(((out["actions"] - mean) / std).std())
        env_actions = unsquash_action(out["actions"].detach().numpy().astype(np.float64), env.action_space)
        # whether the simulator terminates replaying the imagined actions a[0..H-2] from each start
        sim = simulate_actions(env, real["qpos"], real["qvel"], env_actions[:, None, :-1])["terminals"][:, 0, -1] > 0
        error = open_loop_error(env, real["qpos"], real["qvel"], env_actions, out["observations"])
        by_rule = window_terminals(rule, out["observations"])
        row = {"policy_guidance": mode, "delta": delta, "z_std": z_std,
               "imagined_terminates": float(out["terminals"].any(1).float().mean()),
               "imagined_terminates_env_rule": float(by_rule.any(1).float().mean()),
               "sim_terminates": float(sim.mean()), "open_loop_mse": float(np.nanmean(error[1:]))}
        rows.append(row)
        label = f"score {delta:.4g}" if delta is not None else mode
        print(f"{label:>16} {z_std:>6.2f} {row['imagined_terminates']:>13.2f} "
              f"{row['imagined_terminates_env_rule']:>10.2f} {row['sim_terminates']:>27.2f} "
              f"{row['open_loop_mse']:>13.3f}")
    model.log_delta = log_delta
    result["imagination"] = rows

    print(f"3. the policy closed loop from the same starts terminates in {result['policy_closed_loop_terminates']:.2f} "
          f"of the windows with its mean action, {result['policy_samples_closed_loop_terminates']:.2f} "
          f"with its samples (first row: the checkpoint's own delta)")

    # 4. do imagined returns follow the actions? K uniform action sequences from each of S starts
    starts, sequences = min(args.response_starts, args.windows), args.response_sequences
    uniform = np.random.default_rng(args.seed).uniform(-1, 1, (starts, sequences, horizon, model.act_dim))
    imagined = imagine_with_actions(model, np.repeat(real["observations"][:starts, 0], sequences, axis=0),
                                    uniform.reshape(starts * sequences, horizon, -1), seed=0)
    imagined_rewards = imagined["rewards"].numpy().reshape(starts, sequences, horizon)
    simulated = simulate_actions(env, real["qpos"][:starts], real["qvel"][:starts],
                                 unsquash_action(uniform, env.action_space))
    sim_rewards = simulated["rewards"]
    one_step = within_start_r2(imagined["observations"].numpy()[:, 1].reshape(starts, sequences, -1),
                               simulated["next_observations"][:, :, 0])  # [D_s]
    response = [within_start_correlation(imagined_rewards[..., :h + 1].sum(-1), sim_rewards[..., :h + 1].sum(-1))
                for h in range(horizon - 1)]
    plain = float(np.corrcoef(imagined_rewards[..., :-1].sum(-1).ravel(), sim_rewards[..., :-1].sum(-1).ravel())[0, 1])
    result["action_response"] = {"starts": starts, "sequences": sequences, "within_start_by_steps": response,
                                 "plain_window_return": plain, "one_step_r2_by_dim": one_step.tolist()}
    print(f"4. {sequences} uniform action sequences from each of {starts} starts, the model conditioned on them: "
          f"within-start correlation of imagined and simulated returns over the first 1..{horizon - 1} steps "
          f"{' '.join(f'{c:.2f}' for c in response)} (plain correlation of the window returns {plain:.2f}); "
          f"within-start R^2 of s[1] by state dimension {' '.join(f'{c:.2f}' for c in one_step)}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
