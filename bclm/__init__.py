"""bclm: behavior cloning as language modeling."""

__version__ = "0.2.0"
