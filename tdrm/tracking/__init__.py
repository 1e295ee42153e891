from .base import MemoryTracker, Tracker

__all__ = ["MemoryTracker", "Tracker"]
