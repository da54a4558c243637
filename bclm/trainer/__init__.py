from bclm.trainer.bc import train
from bclm.trainer.config import LoopConfig, OptimConfig, TrainRecipe
from bclm.trainer.step import action_loss, train_step

__all__ = ["LoopConfig", "OptimConfig", "TrainRecipe", "action_loss", "train", "train_step"]
