"""Imagination throughput of the world model (issue 2's bench; not a test).

For batch x model size x reverse steps x guide, on HalfCheetah dims (D_s 17, D_a 6) with H = 10, times
`WorldModel.imagine` with a PPO-like policy (2x256 tanh MLP -> mean, std) and critic (2x256 tanh MLP) and
reports imagined transitions/s, denoiser calls/s, denoiser FLOPs and achieved GFLOP/s beside a float32
matmul ceiling measured in the same run, plus where the time goes (denoiser forward, policy, critic forward,
everything else: the guide's backward pass, the sampler's elementwise work, normalisation).

FLOPs count the denoiser's forward pass only (`flops_per_sample()` x batch per call: linear layers, 2 per
multiply-add). With grad_wrt="x0" (the default, used here) the SAG guide does not differentiate the
denoiser; its gradient passes through the critic only.

Slow configurations are timed over fewer reverse steps and scaled: one reverse step costs the same at every
t (batch and shapes are fixed), so time(K steps) = time(k steps) * K / k. The table marks them (`k<K`).

    OMP_NUM_THREADS=1 python bench/imagination.py [--device cpu|cuda] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from a checkout without install
from agd_ray.world_model import GuideConfig, WorldModel, WorldModelConfig  # noqa: E402

OBS_DIM, ACT_DIM, HORIZON, DIFFUSION_STEPS = 17, 6, 10, 128  # HalfCheetah-v5
SIZES = {"cpu": (256, 4), "paper": (1024, 6)}  # name -> (hidden_dim, num_layers)
STEPS = {"full": 128, "strided": 32}  # sampling steps K of N = 128
GUIDES = {"none": GuideConfig(kind="none"), "sag": GuideConfig(kind="sag", temperature=1.0)}


class GaussianPolicy(nn.Module):
    """PPO-like actor: 2x256 tanh MLP -> (mean, std) with a state-dependent log-std head."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                  nn.Linear(hidden, 2 * act_dim))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.body(obs).chunk(2, dim=-1)  # [..., D_a] each
        return mean, log_std.clamp(-5.0, 2.0).exp()


class ValueFunction(nn.Module):
    """PPO-like critic: 2x256 tanh MLP -> V(s)."""

    def __init__(self, obs_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                  nn.Linear(hidden, 1))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.body(obs).squeeze(-1)  # [...]


class Clock:
    """Accumulated wall time of the calls it wraps (synchronising CUDA so the time is the kernels')."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.total = 0.0

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def wrap(self, fn):
        def timed(*args, **kwargs):
            start = self.now()
            result = fn(*args, **kwargs)
            self.total += self.now() - start
            return result

        return timed

    def hook(self, module: nn.Module) -> None:
        """Time a module's forward passes."""
        starts = []
        module.register_forward_pre_hook(lambda *_: starts.append(self.now()))

        def post(*_):
            self.total += self.now() - starts.pop()

        module.register_forward_hook(post)


def matmul_gflops(n: int, device: torch.device, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of an n x n x n matmul in `dtype` (2 n^3 FLOPs), median of repeats after a warm-up."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    clock = Clock(device)
    a @ b
    times = []
    for _ in range(repeats):
        start = clock.now()
        a @ b
        times.append(clock.now() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def build_model(size: str, sampling_steps: int, device: torch.device, policy_guidance: str = "score") -> WorldModel:
    hidden, layers = SIZES[size]
    config = WorldModelConfig(horizon=HORIZON, hidden_dim=hidden, num_layers=layers, diffusion_steps=DIFFUSION_STEPS,
                              sampling_steps=sampling_steps, ema_start=0, return_model_hidden=0,
                              policy_guidance=policy_guidance)
    return WorldModel(OBS_DIM, ACT_DIM, config=config, device=str(device), seed=0)


def time_imagine(wm, start, policy, critic, guide, device, seed: int = 0) -> dict:
    """One imagine call: total wall time and the part spent in the denoiser, policy and critic."""
    clocks = {name: Clock(device) for name in ("denoiser", "policy", "critic")}
    wm.ema_denoiser._forward_hooks.clear()
    wm.ema_denoiser._forward_pre_hooks.clear()
    clocks["denoiser"].hook(wm.ema_denoiser)
    total = Clock(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    begin = total.now()
    wm.imagine(start, policy=clocks["policy"].wrap(policy), critic=clocks["critic"].wrap(critic), guide=guide,
               generator=generator)
    elapsed = total.now() - begin
    return {"total": elapsed, **{name: c.total for name, c in clocks.items()}}


def bench_config(batch, size, steps_name, guide_name, *, device, repeats, budget, policy, critic,
                 policy_guidance: str = "score") -> dict:
    """Median over repeats of one configuration; long ones timed over k < K reverse steps and scaled. The
    causal rule runs H - 1 reverse processes: its denoiser calls are (H - 1) x K."""
    num_steps = STEPS[steps_name]
    processes = HORIZON - 1 if policy_guidance == "causal" else 1
    guide = GUIDES[guide_name]
    start = torch.randn(batch, OBS_DIM, generator=torch.Generator().manual_seed(1)).to(device)
    # Calibrate (and warm up) with two reverse steps, then time as many steps as the budget allows.
    probe = build_model(size, 2, device, policy_guidance)
    time_imagine(probe, start, policy, critic, guide, device)
    per_step = time_imagine(probe, start, policy, critic, guide, device)["total"] / 2
    fits = repeats * per_step * num_steps <= 1.5 * budget
    measured = num_steps if fits else min(num_steps, max(2, int(budget / (repeats * per_step))))
    wm = probe if measured == 2 else build_model(size, measured, device, policy_guidance)
    if measured != 2:
        time_imagine(wm, start, policy, critic, guide, device)  # warm-up at the timed shape
    runs = [time_imagine(wm, start, policy, critic, guide, device) for _ in range(repeats)]
    median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    scale = num_steps / measured
    seconds = median["total"] * scale
    flops_per_call = wm.ema_denoiser.flops_per_sample() * batch
    other = max(0.0, median["total"] - median["denoiser"] - median["policy"] - median["critic"])
    return {
        "batch": batch, "size": size, "hidden_dim": SIZES[size][0], "num_layers": SIZES[size][1],
        "steps": steps_name, "sampling_steps": num_steps, "measured_steps": measured, "guide": guide_name,
        "policy_guidance": policy_guidance, "seconds_per_imagine": seconds,
        "transitions_per_s": batch * HORIZON / seconds,
        "denoiser_calls_per_s": processes * num_steps / seconds,
        "denoiser_flops_per_call": flops_per_call,
        "denoiser_gflops_per_s": flops_per_call * processes * num_steps / (median["denoiser"] * scale) / 1e9,
        "effective_gflops_per_s": flops_per_call * processes * num_steps / seconds / 1e9,
        "fraction": {key: median[key] / median["total"] for key in ("denoiser", "policy", "critic")}
        | {"other": other / median["total"]},
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def format_table(rows: list[dict]) -> str:
    head = (f"{'batch':>5} {'size':>5} {'steps':>11} {'guide':>5} {'rule':>7} {'s/imagine':>9} {'trans/s':>9} "
            f"{'calls/s':>8} {'MFLOP/call':>10} {'GFLOP/s':>7} {'ceil':>5} {'%ceil':>5} {'den%':>4} {'pol%':>4} "
            f"{'crit%':>5} {'other%':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        steps = f"{r['steps']} {r['sampling_steps']}" + ("" if r["measured_steps"] == r["sampling_steps"]
                                                          else f"/{r['measured_steps']}")
        f = r["fraction"]
        lines.append(
            f"{r['batch']:>5} {r['size']:>5} {steps:>11} {r['guide']:>5} {r.get('policy_guidance', 'score'):>7} "
            f"{r['seconds_per_imagine']:>9.3f} "
            f"{r['transitions_per_s']:>9.0f} {r['denoiser_calls_per_s']:>8.1f} "
            f"{r['denoiser_flops_per_call'] / 1e6:>10.1f} {r['denoiser_gflops_per_s']:>7.1f} "
            f"{r['matmul_ceiling_gflops']:>5.0f} {100 * r['denoiser_gflops_per_s'] / r['matmul_ceiling_gflops']:>5.0f} "
            f"{100 * f['denoiser']:>4.0f} {100 * f['policy']:>4.0f} "
            f"{100 * f['critic']:>5.0f} {100 * f['other']:>6.0f}"
        )
    return "\n".join(lines)


def profile(device, policy, critic, batch: int = 64) -> None:
    """Top operators by self time of one imagine call (after a warm-up), to see what besides the denoiser
    costs time at small sizes."""
    from torch.profiler import ProfilerActivity, profile as torch_profile, record_function

    wm = build_model("cpu", STEPS["strided"], device)
    start = torch.randn(batch, OBS_DIM, generator=torch.Generator().manual_seed(1)).to(device)
    guide = GUIDES["sag"]
    time_imagine(wm, start, policy, critic, guide, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        with record_function("imagine"):
            wm.imagine(start, policy=policy, critic=critic, guide=guide,
                       generator=torch.Generator(device=device).manual_seed(0))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the model runs")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="a few small configurations (smoke run)")
    parser.add_argument("--policy-guidance", nargs="+", default=["score"], choices=["score", "reparam", "causal"],
                        help="the sampler's action rules, side by side (causal: H - 1 reverse processes per window)")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 64 256 1024)")
    parser.add_argument("--sizes", nargs="+", default=None, choices=list(SIZES), help="model sizes (default all)")
    parser.add_argument("--steps", nargs="+", default=None, choices=list(STEPS), help="step settings (default all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed imagine calls per configuration (median)")
    parser.add_argument("--budget", type=float, default=8.0,
                        help="seconds of timed work per configuration; beyond it fewer reverse steps are timed")
    parser.add_argument("--profile", action="store_true",
                        help="profile one imagine call (batch 64, cpu size, strided, sag) with torch.profiler and exit")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the card's dense bf16 peak in TFLOP/s, for the share of it reached (e.g. 989 for an "
                             "H100/H200 SXM)")
    parser.add_argument("--out", default="bench/out/imagination.json", help="JSON results file")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1 or args.budget <= 0:
        parser.error(f"--threads {args.threads}, --repeats {args.repeats} must be >= 1 and --budget > 0")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    torch.manual_seed(0)
    policy = GaussianPolicy(OBS_DIM, ACT_DIM).to(device)
    critic = ValueFunction(OBS_DIM).to(device)
    if args.profile:
        profile(device, policy, critic)
        return
    batches, sizes, steps, guides = args.batches or [64, 256, 1024], args.sizes or list(SIZES), \
        args.steps or list(STEPS), list(GUIDES)
    if args.quick:
        batches, sizes, steps = [64], ["cpu"], ["strided"]
        args.repeats, args.budget = min(args.repeats, 2), min(args.budget, 1.0)
    wall, load_start = time.perf_counter(), os.getloadavg()[0]
    ceiling = matmul_gflops(2048, device)
    rows = []
    for size in sizes:
        for batch in batches:
            for steps_name in steps:
                for guide_name in guides:
                    for rule in args.policy_guidance:
                        # The cores are shared: a ceiling measured next to each configuration tracks the load.
                        load, row_ceiling = os.getloadavg()[0], matmul_gflops(2048, device, repeats=3)
                        row = bench_config(batch, size, steps_name, guide_name, device=device, repeats=args.repeats,
                                           budget=args.budget, policy=policy, critic=critic, policy_guidance=rule)
                        row.update(matmul_ceiling_gflops=row_ceiling, load_average_1min=load)
                        rows.append(row)
                        print(format_table([row]).splitlines()[-1], file=sys.stderr, flush=True)
    ceiling_after = matmul_gflops(2048, device)
    # On CUDA the denoiser runs under bf16 autocast (WorldModelConfig.amp): its ceiling is a large bf16 product.
    bf16_ceiling = matmul_gflops(8192, device, dtype=torch.bfloat16) if device.type == "cuda" else None
    meta = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "matmul_ceiling_gflops": ceiling, "matmul_ceiling_gflops_after": ceiling_after,
        "matmul_ceiling_shape": "2048 x 2048 @ 2048 x 2048 float32",
        "bf16_matmul_ceiling_gflops": bf16_ceiling, "peak_tflops": args.peak_tflops,
        "obs_dim": OBS_DIM, "act_dim": ACT_DIM, "horizon": HORIZON, "diffusion_steps": DIFFUSION_STEPS,
        "load_average_1min_start": load_start, "repeats": args.repeats, "budget_s": args.budget,
        "wall_s": time.perf_counter() - wall,
        "notes": "FLOPs: denoiser forward only; transitions = batch x H; sag uses grad_wrt=x0 (denoiser not "
                 "differentiated); rows with measured_steps < sampling_steps are timed over measured_steps "
                 "and scaled by sampling_steps / measured_steps.",
    }
    print(f"device {meta['device']} ({meta['cpu']}, {meta['threads']} thread(s)), torch {meta['torch']}; "
          f"matmul ceiling {ceiling:.1f} GFLOP/s at the start, {ceiling_after:.1f} at the end; "
          f"load average {load_start:.1f} at the start; wall {meta['wall_s']:.0f} s")
    print(format_table(rows))
    print("steps 'full 128/k': timed over k reverse steps and scaled to 128. GFLOP/s: denoiser forward FLOPs / "
          "denoiser time; ceil: 2048^3 float32 matmul GFLOP/s measured just before the row; %ceil: GFLOP/s of ceil; "
          "den/pol/crit/other: share of the imagine wall time.")
    if bf16_ceiling is not None:
        best = max(rows, key=lambda r: r["denoiser_gflops_per_s"])
        peak = f", {100 * best['denoiser_gflops_per_s'] / (1e3 * args.peak_tflops):.1f}% of the card's " \
               f"{args.peak_tflops:g} TFLOP/s bf16 peak" if args.peak_tflops else ""
        print(f"best denoiser rate {best['denoiser_gflops_per_s'] / 1e3:.1f} TFLOP/s (batch {best['batch']}, "
              f"{best['size']}, {best['steps']}): {100 * best['denoiser_gflops_per_s'] / bf16_ceiling:.1f}% of an "
              f"8192^3 bf16 matmul measured here ({bf16_ceiling / 1e3:.0f} TFLOP/s){peak}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
