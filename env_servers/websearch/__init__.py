"""Online web search environment server: Search-R1's ``/retrieve`` API backed by a web search provider.

MEM1's search tasks were trained against a local Wikipedia retriever; this package serves the same API
from live web search (Serper, Google results) so ``RetrievalEnvironment`` works against either unchanged.
Only constants live here: fastapi and httpx are imported by the submodules that need them, so the CLI
module (imported to build ``mem1 --help``) stays cheap.
"""

API_KEY_ENV = "SERPER_API_KEY"
DEFAULT_BASE_URL = "https://google.serper.dev"
DEFAULT_CACHE_DIR = "~/.cache/verl-mem1/serper"
DEFAULT_PORT = 8002
PROVIDERS = ("serper",)
