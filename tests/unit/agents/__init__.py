"""Unit tests for the pure helpers of the agents."""
