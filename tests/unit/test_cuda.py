"""CUDA path (marked gpu, left out of the default run): training under autocast (none, bf16, fp16) reduces the loss,
the trained denoiser's autocast output agrees with its fp32 output on the same inputs to within the dtype's
precision, sampling stays on the device, and fp32 on CUDA matches the CPU for the same weights."""

import contextlib

import pytest
import torch

from agd_ray.world_model import GuideConfig, WorldModel, WorldModelConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

DS, DA, H = 5, 2, 6


def _policy(s):
    return torch.tanh(s[..., :DA]), torch.full(s.shape[:-1] + (DA,), 0.5, device=s.device)


def _critic(s):
    return -(s**2).sum(-1)


def _batch(device):
    g = torch.Generator().manual_seed(0)
    return {
        "observations": torch.randn(128, H, DS, generator=g).to(device),
        "actions": torch.randn(128, H, DA, generator=g).to(device),
        "rewards": torch.randn(128, H, generator=g).to(device),
        "terminals": torch.zeros(128, H).to(device),
    }


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_cuda_training_reduces_the_loss_and_sampling_stays_on_device(amp):
    cfg = WorldModelConfig(horizon=H, hidden_dim=128, num_layers=2, diffusion_steps=16, sampling_steps=16,
                           ema_start=0, amp=amp)
    wm = WorldModel(DS, DA, cfg, device="cuda")
    batch = _batch("cuda")
    wm.fit_normalizer(batch)
    losses = [wm.update(batch)["loss"] for _ in range(200)]
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
    # The same weights and inputs in fp32 and under autocast: the difference is rounding, a few units of the
    # dtype's precision (bf16 keeps 8 significant bits, fp16 11) relative to the output's scale.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, H, DS + 2, generator=g).cuda()
    a = torch.randn(64, H, DA, generator=g).cuda()
    t = torch.randint(1, 17, (64,), generator=g).cuda()
    with torch.no_grad():
        want = wm.denoiser(x, a, t).float()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        with torch.autocast("cuda", dtype=dtype) if dtype else contextlib.nullcontext():
            got = wm.denoiser(x, a, t).float()
    tolerance = {"none": 1e-6, "bf16": 0.05, "fp16": 0.01}[amp]
    assert (got - want).abs().max() <= tolerance * want.abs().max()
    start = batch["observations"][:, 0]
    out = wm.imagine(start, policy=_policy, critic=_critic, guide=GuideConfig(kind="sag", method="gradient"),
                     generator=torch.Generator().manual_seed(0))  # a CPU generator seeds a device generator
    assert out["observations"].device.type == "cuda" and torch.isfinite(out["observations"]).all()
    assert torch.equal(out["observations"][:, 0], start)


def test_cuda_fp32_matches_cpu_weights_for_the_same_inputs():
    cfg = WorldModelConfig(horizon=H, hidden_dim=64, num_layers=2, diffusion_steps=16, sampling_steps=16, amp="none")
    cpu, gpu = WorldModel(DS, DA, cfg, device="cpu"), WorldModel(DS, DA, cfg, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(8, H, DS + 2)
    a = torch.randn(8, H, DA)
    t = torch.full((8,), 7)
    want = cpu.denoiser(x, a, t)
    got = gpu.denoiser(x.cuda(), a.cuda(), t.cuda()).cpu()
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
