"""WebShop fixtures on top of tests/conftest.py (``webshop_shop``, ``webshop_url``: the bundled shop and a real
uvicorn server over it, built once per session and shared with the rollout tests).

That shop tags nouns with the stop-word fallback, so rewards do not depend on whether spaCy is installed.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from env_servers.webshop.data import Catalog
from env_servers.webshop.shop import Shop


@pytest.fixture(scope="session")
def webshop_catalog(webshop_shop: Shop) -> Catalog:
    return webshop_shop.catalog


@pytest.fixture()
def webshop_client(webshop_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=webshop_url, timeout=30.0) as c:
        yield c
