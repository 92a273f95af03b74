"""LangChain's standard suites (``langchain-tests``) write their async tests as plain ``async def`` methods for
pytest-asyncio's auto mode; the project runs pytest-asyncio in its default strict mode, so those tests are
marked here, and only those (the sync tests of the same classes stay unmarked)."""

from __future__ import annotations

import inspect
from collections.abc import Generator

import pytest


@pytest.hookimpl(hookwrapper=True, trylast=True)  # innermost: marks the items before pytest-asyncio converts them
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> Generator[None, None, None]:
    outcome = yield
    result = outcome.get_result()
    items = result if isinstance(result, list) else [result]
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(getattr(item, "obj", None)):
            if item.get_closest_marker("asyncio") is None:
                item.add_marker(pytest.mark.asyncio)
