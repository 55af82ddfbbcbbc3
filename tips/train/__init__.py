"""TIPS pretraining: config, schedules, EMA teacher, the objective and the accelerate loop."""

from .config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config"]
