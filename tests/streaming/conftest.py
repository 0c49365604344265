"""The property tests here need Python's global ``random`` to themselves."""

import sys

import pytest


@pytest.fixture(autouse=True)
def no_background_random():
    """Stop Prefect's events worker if an earlier flow test started it.

    Its websocket keepalive pings draw from the global ``random`` on a background thread
    (``websockets``' ``ping``), and Hypothesis warns ("Do not use the `random` module inside
    strategies") whenever that state moves while it draws an example. Draining takes
    milliseconds, and the next flow run starts the worker again.
    """
    if "prefect.events.worker" in sys.modules:
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all()
    yield
