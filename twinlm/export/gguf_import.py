"""The `gguf` package, imported without mistral_common: `from twinlm.export.gguf_import import gguf`.

`import gguf` loads gguf.vocab, which imports mistral_common where it is installed (for gguf's
MistralVocab, which twinlm never uses): ~0.3 s of a conversion that takes ~3 s for a 1B model. That
import is guarded in gguf (`except ImportError`), so while gguf is first imported here, mistral_common
is made to look absent; afterwards it imports as usual for anything else in the process.
"""

from __future__ import annotations

import sys

_HIDE = "gguf" not in sys.modules and "mistral_common" not in sys.modules
if _HIDE:
    sys.modules["mistral_common"] = None  # type: ignore[assignment]  # its import raises ImportError
try:
    import gguf
finally:
    if _HIDE and "mistral_common" in sys.modules and sys.modules["mistral_common"] is None:
        del sys.modules["mistral_common"]

__all__ = ["gguf"]
