"""Equal weighting: every task weighs 1 (the "w/o adaptive weighting" ablation)."""

from __future__ import annotations

import torch
from torch import Tensor

from adapmtl_cli.engine.weighting.base import TaskWeighting


class EqualWeighting(TaskWeighting):
    """Every task weighs 1: the paper's "w/o adaptive weighting" ablation."""

    def weights(self) -> Tensor:
        return torch.ones(self.num_tasks, dtype=torch.float64)
