"""TIPS pretraining: config, the run plan, schedules, EMA teacher, the objective and the accelerate loop."""

from .config import TrainConfig, load_config
from .plan import PlanError, TrainPlan, make_plan

__all__ = ["PlanError", "TrainConfig", "TrainPlan", "load_config", "make_plan"]
