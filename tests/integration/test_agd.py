"""A tiny AGD run on local Ray that asserts the loop's counters (STYLE.md: counters, not returns).

2 env runners, a tiny world model, 3 iterations; then save, restore into a fresh algorithm, one more
iteration, and the counters continue (the batch in flight at save time is imagined again on restore, the
same windows). The loop is pipelined (the next batch is imagined while the env
runners sample, the world model trains while PPO updates): the counters must not notice. The model-free
baseline runs through the same harness.
"""


import numpy as np
import pytest

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.integration

ENV_STEPS_PER_ITER = 200  # train_batch_size_per_learner
PREFILL = 300
RATIO = 0.5
BATCH, HORIZON = 16, 4


def tiny_config():
    from agd_ray import AGDConfig

    return (AGDConfig()
            .environment("InvertedPendulum-v5")
            .env_runners(num_env_runners=2, num_cpus_per_env_runner=0.5, rollout_fragment_length=50)
            .training(train_batch_size_per_learner=ENV_STEPS_PER_ITER, minibatch_size=32, num_epochs=1)
            .rl_module(model_config={"fcnet_hiddens": [16, 16]})
            .world_model(horizon=HORIZON, hidden_dim=16, num_layers=1, diffusion_steps=8, sampling_steps=2,
                         batch_size=8, updates_per_env_step=RATIO, pretrain_updates=0, num_cpus=0,
                         batches_per_call=64)
            .guidance(kind="sag", temperature=1.0)
            .imagination(batch_size=BATCH, advantage_gain_windows=4, quality_interval=2, quality_windows=4)
            .replay(capacity=10_000, prefill_steps=PREFILL, chunk_size=100)
            .debugging(seed=0))


def counters(result: dict) -> dict:
    return {
        "env_steps": int(result["agd"]["env_steps_lifetime"]),
        "rllib_env_steps": int(result["env_runners"]["num_env_steps_sampled_lifetime"]),
        "replay_size": int(result["replay"]["size"]),
        "world_model_updates": int(result["world_model"]["num_updates"]),
        "imagined": int(result["imagination"]["num_transitions_lifetime"]),
        "imagined_this_iter": int(result["imagination"]["num_transitions"]),
        "env_runner_seq_no": int(result["env_runners"]["weights_seq_no"]),
        "world_model_seq_no": int(result["world_model"]["weights_seq_no"]),
        "imagination_seq_no": int(result["imagination"]["weights_seq_no"]),
        "policy_updates": int(result["agd"]["policy_updates"]),
        "prefetched": int(result["imagination"]["prefetched"]),
        "quality": {k: float(v) for k, v in result.get("quality", {}).items() if not isinstance(v, dict)},
        "gain_sigma": float(result["guidance"]["advantage_gain_sigma"]),
    }


def check_invariants(c: dict) -> None:
    assert c["env_steps"] == c["rllib_env_steps"]
    assert c["replay_size"] == c["env_steps"]  # every real step streamed to replay, none twice
    assert c["world_model_updates"] == int(RATIO * c["env_steps"])
    # one window -> one episode of 1..H transitions
    assert BATCH <= c["imagined_this_iter"] <= BATCH * HORIZON
    # the world model guided this iteration's windows with the previous policy version, then got the new one
    assert c["imagination_seq_no"] == c["world_model_seq_no"] - 1


def test_agd_counters_and_checkpoint(local_ray, tmp_path):
    algo = tiny_config().build_algo()
    history = []
    try:
        for _ in range(3):
            history.append(counters(algo.train()))
        for c in history:
            check_invariants(c)
        first = history[0]
        # the first iteration does the random prefill (>= PREFILL steps), later ones a batch each
        assert first["env_steps"] >= PREFILL
        for before, after in zip(history, history[1:]):
            assert after["env_steps"] - before["env_steps"] >= ENV_STEPS_PER_ITER
            assert after["imagined"] == before["imagined"] + after["imagined_this_iter"]
            assert after["world_model_seq_no"] == before["world_model_seq_no"] + 1
            assert after["env_runner_seq_no"] == before["env_runner_seq_no"] + 1
            assert after["policy_updates"] == before["policy_updates"] + 1
        assert [c["policy_updates"] for c in history] == [1, 2, 3]
        # the first batch is imagined after pretraining; later ones were in flight from the previous iteration
        assert [c["prefetched"] for c in history] == [0, 1, 1]
        # world-model quality (quality_interval=2): measured in iteration 2 only, open loop guided and unguided
        measured = [bool(c["quality"]) and all(np.isfinite(list(c["quality"].values()))) for c in history]
        assert measured == [False, True, False]
        quality = history[1]["quality"]
        assert {"open_loop_mse_guided", "open_loop_mse_unguided", "action_z_mean_guided",
                "action_z_std_unguided"} <= set(quality)
        assert quality["open_loop_mse_guided"] >= 0 and quality["open_loop_mse_unguided"] >= 0
        # the resampling guide's effect on every batch (from its own candidates), and on the quality iteration
        # imagined and on the simulator
        assert all(np.isfinite(c["gain_sigma"]) for c in history)
        assert {"advantage_gain_sigma", "real_advantage_gain_sigma", "real_advantage_gain"} <= set(quality)
        checkpoint = algo.save_to_path(str(tmp_path / "checkpoint"))
        saved = history[-1]
        pending = ray.get(algo._pending_imagination)  # the next update's batch, in flight at save time
    finally:
        algo.stop()

    restored = tiny_config().build_algo()
    try:
        restored.restore_from_path(checkpoint)
        # not stored in the checkpoint: imagined again on restore, and the same batch
        again = ray.get(restored._pending_imagination)
        assert len(again) == len(pending) == 1
        for key, value in pending[0].windows.items():
            np.testing.assert_array_equal(again[0].windows[key], value, err_msg=key)
        assert again[0].weights_seq_no == pending[0].weights_seq_no
        after = counters(restored.train())
    finally:
        restored.stop()
    check_invariants(after)
    assert after["prefetched"] == 1
    assert after["env_steps"] - saved["env_steps"] >= ENV_STEPS_PER_ITER  # no second prefill
    assert after["replay_size"] == after["env_steps"]  # replay contents came back
    assert after["imagined"] == saved["imagined"] + after["imagined_this_iter"]
    assert after["policy_updates"] == saved["policy_updates"] + 1
    assert after["world_model_seq_no"] == saved["world_model_seq_no"] + 1
    assert after["env_runner_seq_no"] == saved["env_runner_seq_no"] + 1


def test_model_free_baseline_same_harness(local_ray):
    # Local sampling (no env-runner processes) keeps this test quick; the loop is PPO's own.
    algo = tiny_config().model_free().env_runners(num_env_runners=0).build_algo()
    try:
        result = algo.train()
    finally:
        algo.stop()
    assert result["env_runners"]["num_env_steps_sampled_lifetime"] >= ENV_STEPS_PER_ITER
    assert "world_model" not in result and "imagination" not in result
    assert result["learners"]["default_policy"]["num_module_steps_trained"] > 0


@pytest.mark.parametrize("model_based", [False, True], ids=["model-free", "model-based"])
def test_the_iteration_that_reaches_the_budget_evaluates(local_ray, model_based):
    # Evaluation every 3 iterations; the budget (2 iterations' env steps, the prefill's included) falls between:
    # the iteration reaching it evaluates too, and `agd/evaluated` marks exactly the evaluated iterations.
    config = tiny_config().env_runners(num_env_runners=0).replay(prefill_steps=ENV_STEPS_PER_ITER)
    if not model_based:
        config = config.model_free()
    config = config.evaluation(evaluation_interval=3, evaluation_num_env_runners=0, evaluation_duration=1,
                               evaluation_duration_unit="episodes")
    config.evaluate_at_env_steps = 2 * ENV_STEPS_PER_ITER
    algo = config.build_algo()
    calls, evaluate = [], algo.evaluate
    algo.evaluate = lambda *args, **kwargs: calls.append(algo.iteration) or evaluate(*args, **kwargs)
    try:
        results = [algo.train() for _ in range(4)]
    finally:
        algo.stop()
    steps = [int(r["env_runners"]["num_env_steps_sampled_lifetime"]) for r in results]
    assert steps[0] < 2 * ENV_STEPS_PER_ITER <= steps[1]
    assert calls == [1, 2]  # RLlib's `iteration` counts finished iterations: evaluated in the 2nd and the 3rd
    assert [r["agd"]["evaluated"] for r in results] == [False, True, True, False]
    assert np.isfinite(results[1]["evaluation"]["env_runners"]["episode_return_mean"])


def test_evaluate_at_env_steps_must_be_a_positive_integer():
    config = tiny_config()
    config.evaluate_at_env_steps = 0
    with pytest.raises(ValueError, match=r"evaluate_at_env_steps=0 .*None or an integer >= 1"):
        config.validate()


def test_simulator_source_feeds_ppo_on_policy_windows(local_ray):
    """The perfect-model control (`imagination.source="simulator"`) goes through the same loop: the counters
    hold, and its windows' actions are the policy's own samples (z = (a - mu) / sigma is N(0, 1))."""
    config = (tiny_config().env_runners(num_env_runners=0).guidance(kind="none")
              .imagination(batch_size=128, source="simulator"))
    algo = config.build_algo()
    try:
        results = [algo.train() for _ in range(2)]
    finally:
        algo.stop()
    c = counters(results[-1])
    assert c["env_steps"] == c["rllib_env_steps"] == c["replay_size"]
    assert c["imagination_seq_no"] == c["world_model_seq_no"] - 1
    for result in results:
        pairs = int(result["imagination"]["num_transitions"])
        z_std = float(result["imagination"]["action_z_std"])
        assert 128 <= pairs <= 128 * (HORIZON - 1)
        assert abs(z_std - 1.0) < 5 / np.sqrt(2 * pairs)  # sampling error of a std, 5 standard errors


def test_simulator_source_refuses_a_guide():
    config = tiny_config().imagination(source="simulator")  # tiny_config guides with sag
    with pytest.raises(ValueError, match="guidance.kind='sag'.*simulator"):
        config.validate()
    with pytest.raises(ValueError, match="source='model'.*'diffusion', 'simulator'"):
        tiny_config().imagination(source="model")


def test_env_termination_rule_decides_the_imagined_windows(local_ray):
    """imagination.termination="env" reaches the world-model actor: the windows PPO gets terminate exactly where
    InvertedPendulum's own rule says (d[h] = |angle of s[h+1]| > 0.2), not where the terminal channel does."""
    import torch

    from agd_ray.envs.termination import terminal_rule, window_terminals

    algo = tiny_config().env_runners(num_env_runners=0).imagination(termination="env").build_algo()
    try:
        algo.train()
        (batch,) = ray.get(algo._pending_imagination)
    finally:
        algo.stop()
    windows = batch.windows
    expected = window_terminals(terminal_rule("InvertedPendulum-v5"), torch.as_tensor(windows["observations"]))
    np.testing.assert_array_equal(windows["terminals"], expected.numpy())
    assert len(windows["terminals"]) == BATCH
