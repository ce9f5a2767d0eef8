"""slidewatch's library: planning, catalog search, cube assembly, factors, LSI, stores.

Pure where it can be; never imports torch or prefect.
"""

from __future__ import annotations

__version__ = "0.1.0"
