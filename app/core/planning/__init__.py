"""Will it fit and how fast: hardware, the memory planner and fit verdicts."""
