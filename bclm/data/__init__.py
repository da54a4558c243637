from bclm.data.collate import PackCollator, PadCollator
from bclm.data.sequences import (
    IGNORE_INDEX,
    DataConfig,
    EpisodeTokens,
    WindowDataset,
    tokenize_episodes,
)
from bclm.data.store import EpisodeRecord, StepArrays, TrajectoryStore

__all__ = ["IGNORE_INDEX", "DataConfig", "EpisodeRecord", "EpisodeTokens", "PackCollator", "PadCollator", "StepArrays",
           "TrajectoryStore", "WindowDataset", "tokenize_episodes"]
