"""CUDA path (marked gpu, left out of the default run): autocast training and sampling agree with fp32."""

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
