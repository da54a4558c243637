from bclm.eval.evaluate import EvalConfig, evaluate, format_table, write_report

__all__ = ["EvalConfig", "evaluate", "format_table", "write_report"]
