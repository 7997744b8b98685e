"""Sparsity controllers, one module each, behind the interface of ``base.py``: the reference's
stop rule (``freeze``), the schedule that lands on the target (``schedule``) and the mask keeper of
a pruned model's finetuning (``masks``)."""

from adapmtl_cli.engine.controllers.base import ControllerGroup, SparsityController, target_note
from adapmtl_cli.engine.controllers.freeze import FreezeController
from adapmtl_cli.engine.controllers.masks import MaskKeeper
from adapmtl_cli.engine.controllers.schedule import ScheduleController, planned_sparsity

__all__ = ["ControllerGroup", "FreezeController", "MaskKeeper", "ScheduleController", "SparsityController",
           "planned_sparsity", "target_note"]
