"""``seqpack.hf``: the Hugging Face transformers integration, under its short name.

``import seqpack.hf`` and ``from seqpack.hf import enable_packing`` work as docs/hf.md shows.
The code lives in `seqpack.integrations.hf` (beside the collator, the fused loss and
``seqpack verify``); this module is that one's public surface. Importing it imports
transformers.
"""

from seqpack.integrations.hf import *  # noqa: F401,F403  (the public names, listed in __all__)
from seqpack.integrations.hf import __all__  # noqa: F401
