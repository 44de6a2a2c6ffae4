"""Where the tests' data lives. (Not in conftest.py: nested conftest files would shadow its name.)"""

from __future__ import annotations

import os
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLES = Path(__file__).parent.parent / "examples" / "exports"
# Documents are ingested from their own path (`--documents`), never from inside an export folder.
DOCUMENTS = Path(__file__).parent.parent / "examples" / "documents"
# Real exports to run the parsers over (CI: ../shared/realdata); a folder that does not exist if unset.
REALDATA = Path(os.environ.get("TWINLM_EXTRA_EXPORTS") or Path(__file__).parent / "no-extra-exports")
