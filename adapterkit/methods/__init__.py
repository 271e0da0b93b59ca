"""Adapter methods; importing a method's package registers it."""
from . import lora  # noqa: F401
