from bclm.trainer.bc import action_loss, train, train_step
from bclm.trainer.config import LoopConfig, OptimConfig, TrainRecipe

__all__ = ["LoopConfig", "OptimConfig", "TrainRecipe", "action_loss", "train", "train_step"]
