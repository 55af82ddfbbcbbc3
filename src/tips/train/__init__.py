"""tips.train: how a model is trained — config, the run plan, schedules, student and EMA teacher, the objective
and the accelerate loop. May import ``tips.models``, ``tips.formats``, ``tips.data``, ``tips.losses`` and ``tips.io``."""

from .builders import build_modules
from .config import TrainConfig, load_config
from .plan import PlanError, TrainPlan, make_plan
from .student import with_patch_selection
from .trainer import Trainer

__all__ = ["PlanError", "TrainConfig", "TrainPlan", "Trainer", "build_modules", "load_config", "make_plan",
           "with_patch_selection"]
