"""Direct mode: the engine's task group, calls, pacing, budget, postprocessing, progress."""
