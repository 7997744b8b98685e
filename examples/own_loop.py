"""AdapMTL inside a training loop of your own: the model of examples/custom_model.py (ResNet-18
trunk, one decoder per task), its thresholds, the schedule and the adaptive task weights, through
adapmtl's public API only. From the repository root:

    python examples/own_loop.py [steps]      # 300 steps by default: about 5 minutes on 2 cores

The scenes come from adapmtl's synthetic generator (internal; any dataset yielding an image and
per-task targets will do); the losses are written here, as a user would.
"""

import sys
from pathlib import Path

import torch
from torch.nn import functional as F

import adapmtl_cli
from adapmtl_cli.data.synthetic import SyntheticScenes  # stand-in data

sys.path.insert(0, str(Path(__file__).parent))
from custom_model import build  # noqa: E402

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 300
torch.manual_seed(0)
tasks = ["segment_semantic", "depth_zbuffer"]
model = build({"segment_semantic": 6, "depth_zbuffer": 1}, hidden=48)
sparsifier = adapmtl_cli.Sparsifier(model, {"backbone": "encoder", "head.seg": "decoders.segment_semantic",
                                            "head.depth": "decoders.depth_zbuffer"}, init=-6.0)
controller = adapmtl_cli.ScheduleController(sparsifier, target=0.8, total_steps=steps)
weighting = adapmtl_cli.AdaptiveWeighting(num_tasks=2, begin=steps // 4, window=max(1, steps // 12))
optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.5, 0.999), weight_decay=1e-4)
scenes = SyntheticScenes(tasks, size=2048, resolution=64, num_classes=6, seed=0, split="train")
loader = torch.utils.data.DataLoader(scenes, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))


def losses_of(outputs, targets):
    size = outputs["segment_semantic"].shape[-2:]
    seg = F.interpolate(targets["segment_semantic"][:, None].float(), size=size, mode="nearest")[:, 0].long()
    depth = F.interpolate(targets["depth_zbuffer"], size=size, mode="nearest")
    valid = torch.isfinite(depth)
    return torch.stack([F.cross_entropy(outputs["segment_semantic"], seg, ignore_index=255),
                        (outputs["depth_zbuffer"][valid] - depth[valid]).abs().mean()])


def forever(loader):  # a new shuffled epoch whenever one ends
    while True:
        yield from loader


model.train()
batches = forever(loader)
for step in range(steps):
    image, targets = next(batches)
    losses = losses_of(model(image), targets)
    optimizer.zero_grad()
    (weighting.weights().to(losses) * losses).sum().backward()
    controller.after_backward()
    optimizer.step()
    controller.after_step(step + 1)
    weighting.update(losses.detach(), step)

print(sparsifier.stats())
adapmtl_cli.save_checkpoint("own-loop.safetensors", model, step=steps, tasks=tasks)
