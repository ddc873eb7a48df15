"""The VRAM planner: a training run's peak GPU memory, predicted from the architecture before any weights load.

Importing this package is cheap; torch and the models load when an estimate is first asked for.
"""

from lorasmith.memory.estimate import MemoryEstimate, MemoryPart, estimate_training_memory, largest_bucket

__all__ = ["MemoryEstimate", "MemoryPart", "estimate_training_memory", "largest_bucket"]
