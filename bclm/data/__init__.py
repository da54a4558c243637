from bclm.data.sequences import (
    IGNORE_INDEX,
    DataConfig,
    EpisodeTokens,
    PadCollator,
    WindowDataset,
    tokenize_episodes,
)
from bclm.data.store import EpisodeRecord, StepArrays, TrajectoryStore

__all__ = ["IGNORE_INDEX", "DataConfig", "EpisodeRecord", "EpisodeTokens", "PadCollator", "StepArrays",
           "TrajectoryStore", "WindowDataset", "tokenize_episodes"]
