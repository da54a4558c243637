from bclm.eval.evaluate import EvalConfig, evaluate, format_table, write_report
from bclm.eval.metrics import action_mismatch, cumulative_mistakes, summarize
from bclm.eval.rollout import ExpertActor, RolloutResult, run_episodes

__all__ = ["EvalConfig", "ExpertActor", "RolloutResult", "action_mismatch", "cumulative_mistakes", "evaluate",
           "format_table", "run_episodes", "summarize", "write_report"]
