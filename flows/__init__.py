"""The wiring layer: Prefect flows and the ``stackrec`` CLI.

Prefect reads its settings when it is first imported, so the run directory's Prefect home is
set here, before any flow module imports it: state stays inside ``STACKREC_HOME`` and no
analytics leave the machine. Explicit ``PREFECT_*`` variables still win.
"""

import os
from pathlib import Path

_home = Path(os.environ.get("STACKREC_HOME", ".stackrec")).absolute()
os.environ.setdefault("PREFECT_HOME", str(_home / "prefect"))
Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
