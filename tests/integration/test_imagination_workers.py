"""Imagination across K workers (issue 4 item 4) on CPU: K = 2 gives the same windows as K = 1.

A request is sampled in fixed units, each with a generator seeded from (seed, the unit's first window), so the
trainer imagining the whole request (K = 1) and two `ImaginationActor`s fed its EMA weights by version (K = 2)
produce bit-identical windows, log-probs and counts. Then a tiny AGD run with num_workers=2 keeps the counters.
"""


import numpy as np
import pytest

from tiny_module import tiny_module_spec

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.integration

D_S, D_A, H = 4, 1, 4
BATCH, UNIT = 16, 4


def _replay_with_data():
    from agd_ray.replay.actor import ReplayActor

    rng = np.random.default_rng(0)
    n, length = 600, 50
    step = np.arange(n) % length
    observations = rng.normal(size=(n, D_S)).astype(np.float32)
    chunk = {
        "observations": observations,
        "actions": rng.uniform(-1, 1, size=(n, D_A)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "next_observations": np.roll(observations, -1, axis=0),
        "terminated": step == length - 1,
        "truncated": np.zeros(n, bool),
        "qpos": np.zeros((n, 2)),
        "qvel": np.zeros((n, 2)),
        "episode_ids": (np.arange(n) // length).astype(np.int64),
        "runner_id": 0,
        "seq_no": 0,
    }
    replay = ReplayActor.as_remote(num_cpus=0).remote(obs_dim=D_S, act_dim=D_A, qpos_dim=2, qvel_dim=2,
                                                      capacity=1000, seed=0)
    ray.get(replay.add_chunk.remote(chunk))
    return replay


def _model_kwargs():
    import torch

    from agd_ray.world_model import GuideConfig, WorldModelConfig

    spec = tiny_module_spec(D_S, D_A)
    torch.manual_seed(0)
    module_state = spec.build().get_state()
    kwargs = dict(obs_dim=D_S, act_dim=D_A, module_spec=spec, seed=0, device="cpu",
                  world_model_config=WorldModelConfig(horizon=H, hidden_dim=16, num_layers=1, diffusion_steps=8,
                                                      sampling_steps=3, batch_size=8, ema_start=0),
                  guide_config=GuideConfig(kind="sag", temperature=1.0))
    return kwargs, module_state


def _request(pool, replay, module_state, seed):
    start = replay.sample_start_states.remote(batch_size=BATCH, seed=seed)
    refs = pool.request(start_observations=start, batch_size=BATCH, seed=seed, module_state=module_state,
                        advantage_gain_windows=4)
    return pool.merge(ray.get(refs))


def _assert_same(one, two):
    assert one.windows.keys() == two.windows.keys()
    for key in one.windows:
        np.testing.assert_array_equal(one.windows[key], two.windows[key], err_msg=key)
    for key in ("weights_seq_no", "normalizer_version", "num_nonfinite"):
        assert getattr(one, key) == getattr(two, key), key
    for key in ("num_transitions", "delta", "advantage_gain"):
        assert one.metrics[key] == two.metrics[key], key


def test_two_workers_give_the_same_windows_as_one(local_ray):
    from agd_ray.world_model.actor import ImaginationActor, ImaginationPool, WorldModelActor

    replay = _replay_with_data()
    kwargs, state = _model_kwargs()
    trainer = WorldModelActor.options(num_cpus=0).remote(replay=replay, batches_per_call=8, **kwargs)
    workers = [ImaginationActor.options(num_cpus=0).remote(**kwargs) for _ in range(2)]
    one = ImaginationPool(trainer, [], unit_size=UNIT)
    two = ImaginationPool(trainer, workers, unit_size=UNIT)
    module_state = (3, [ray.put(state)])
    ray.get(trainer.set_module_state.remote(module_state[1][0], 3))
    ray.get(trainer.train.remote(num_updates=10))

    first = _request(one, replay, module_state, seed=5)
    assert first.metrics["num_shards"] == 1 and first.weights_seq_no == 3
    assert first.windows["observations"].shape == (BATCH, H, D_S)
    assert first.metrics["num_transitions"] == BATCH * (H - 1)
    sharded = _request(two, replay, module_state, seed=5)
    assert sharded.metrics["num_shards"] == 2
    _assert_same(first, sharded)

    # After the trainer adapts delta and trains on, both pools follow the new versions, still in step.
    log_delta = trainer.adapt_delta.remote(action_z_std=2.0)
    one.set_log_delta(log_delta)
    two.set_log_delta(log_delta)
    ray.get(trainer.train.remote(num_updates=5))
    one.model_changed()
    two.model_changed()
    again = _request(one, replay, module_state, seed=5)
    assert again.metrics["delta"] > first.metrics["delta"]
    assert not np.array_equal(again.windows["actions"], first.windows["actions"])
    _assert_same(again, _request(two, replay, module_state, seed=5))


def test_agd_with_two_imagination_workers_keeps_the_counters(local_ray):
    from agd_ray import AGDConfig

    config = (AGDConfig()
              .environment("InvertedPendulum-v5")
              .env_runners(num_env_runners=0)
              .training(train_batch_size_per_learner=100, minibatch_size=16, num_epochs=1)
              .rl_module(model_config={"fcnet_hiddens": [16, 16]})
              .world_model(horizon=H, hidden_dim=16, num_layers=1, diffusion_steps=8, sampling_steps=2,
                           batch_size=8, updates_per_env_step=0.5, pretrain_updates=0, num_cpus=0)
              .imagination(batch_size=BATCH, num_workers=2, num_cpus_per_worker=0, advantage_gain_windows=0,
                           policy_updates_per_iteration=2)
              .replay(capacity=2000, prefill_steps=100, chunk_size=100)
              .debugging(seed=0))
    algo = config.build_algo()
    try:
        results = [algo.train() for _ in range(2)]
    finally:
        algo.stop()
    for i, result in enumerate(results, start=1):
        env_steps = int(result["agd"]["env_steps_lifetime"])
        assert env_steps == 100 * i and int(result["replay"]["size"]) == env_steps
        assert int(result["world_model"]["num_updates"]) == int(0.5 * env_steps)
        assert int(result["imagination"]["num_shards"]) == 2
        assert BATCH <= int(result["imagination"]["num_transitions"]) <= BATCH * H
        assert int(result["agd"]["policy_updates"]) == 2 * i
        assert int(result["imagination"]["weights_seq_no"]) == int(result["world_model"]["weights_seq_no"]) - 1
