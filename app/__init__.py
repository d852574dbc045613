"""Sluice: the Faust application, settings, embedded stack and command line."""
