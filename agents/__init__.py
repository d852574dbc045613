"""Stream processors: one module per agent."""
