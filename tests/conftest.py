import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import torch  # noqa: E402

# Small models on small shared machines: one thread is far faster than two (ENVIRONMENT.md).
torch.set_num_threads(1)
