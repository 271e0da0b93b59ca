"""What LoHa and LoKr share (PEFT's "LyCORIS" family): an update dW built from small factors and
added to the base output, ``y = base(x) + op(x, dW)``, with ``op`` the base's own operation
(``F.linear``, ``F.conv2d``); config fields, placement, the layer, merging and file keys.

The methods themselves: ``methods/loha`` (Hadamard product of two low-rank matrices) and
``methods/lokr`` (Kronecker product).
"""

from .config import LycorisConfig
from .layer import DeltaLayer, place

__all__ = ["LycorisConfig", "DeltaLayer", "place"]
