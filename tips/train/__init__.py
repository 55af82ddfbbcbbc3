"""TIPS pretraining: config, the run plan, schedules, EMA teacher, the objective and the accelerate loop."""

from .builders import build_modules
from .config import TrainConfig, load_config
from .plan import PlanError, TrainPlan, make_plan
from .student import with_patch_selection
from .trainer import Trainer

__all__ = ["PlanError", "TrainConfig", "TrainPlan", "Trainer", "build_modules", "load_config", "make_plan",
           "with_patch_selection"]
