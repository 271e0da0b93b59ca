"""Adapter methods; importing a method's package registers it."""
from . import lora  # noqa: F401
from . import bottleneck, ia3, prompt  # noqa: F401  (ia3 uses bottleneck's block roles)
from . import loha, lokr  # noqa: F401
