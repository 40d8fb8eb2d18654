"""
The classroom's own network, settings and training loop for the 2-D toy.

toy2d.py may change its network and defaults; the assignments keep these, so that
their graders' thresholds and the reference results in assignments/README.md stay
valid. They were toy2d.py's when the assignments were written. From toy2d.py the
assignments use only the data and the exact answers (GaussianMixture, default_mixture,
sample_data) and the two metrics (rmse, energy_distance).
"""

import math

import numpy as np
import torch
import torch.nn as nn

import soflow
import toy2d


class MLP(nn.Module):
    """F(x, t, s, y): an MLP on x and sinusoidal features of t and t - s, with a label
    table of num_classes + 1 rows (the last is the null label) if num_classes is given."""

    def __init__(self, dim=2, width=256, depth=4, num_classes=None, freqs=4):
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(freqs) / 2)
        self.inp = nn.Linear(dim + 8 * freqs, width)
        self.label = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.out = nn.Linear(width, dim)

    def forward(self, x, t, s, y=None):
        u = torch.stack([t, t - s], 1)[:, :, None] * self.freqs            # (B, 2, freqs)
        h = self.inp(torch.cat([x, u.sin().flatten(1), u.cos().flatten(1),
                                (2 * u).sin().flatten(1), (2 * u).cos().flatten(1)], 1))
        if self.label is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.label.num_embeddings - 1, device=x.device)
            h = h + self.label(y)
        for layer in self.hidden:
            h = layer(nn.functional.silu(h))
        return self.out(nn.functional.silu(h))


def config(steps, **changes):
    """The method's settings for the toy (unconditional; K = steps). Wider time
    distributions than ImageNet's, so that in a few thousand steps the pairs (t near 1,
    s near 0) of one-step sampling are seen often; lambda = 0.25 and p = 0.5 as in the
    paper's CIFAR-10 setting."""
    return soflow.SoFlowConfig(num_classes=None, label_drop=0.0, guidance_scale=1.0, guidance_mix=1.0,
                               mu_fm=0.0, sigma_fm=1.6, mu_t=0.5, sigma_t=1.6, mu_s=-0.5, sigma_s=1.6,
                               fm_ratio=0.25, p=0.5, eps=0.01, r_init=0.2, r_end=0.002,
                               total_steps=steps).replace(**changes)


def train(cfg, mixture, steps, seed=0, width=256, batch=1024, lr=2e-3):
    """MLP trained on the mixture with soflow.soflow_loss, Adam with a cosine-decayed
    learning rate; returns the network in eval mode."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = MLP(width=width)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for step in range(steps):
        x0 = torch.from_numpy(toy2d.sample_data("gmm", batch, rng, mixture))
        loss, _ = soflow.soflow_loss(net, cfg, x0, step=step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()
