"""Adapter methods; importing a method's package registers it."""

from . import lora  # noqa: F401
from . import bottleneck, ia3, prompt  # noqa: F401
from . import loha, lokr  # noqa: F401
from . import adalora  # noqa: F401
from . import compacter, loreft  # noqa: F401  (compacter uses bottleneck's placement)
from . import vera  # noqa: F401
from . import ln_tuning  # noqa: F401
from . import oft  # noqa: F401
from . import boft  # noqa: F401
