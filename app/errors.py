"""The one base error every Sluice exception derives from."""


class SluiceError(Exception):
    """Base of every error Sluice raises on purpose."""
