"""Search-R1-compatible retrieval environment server: corpus builder, BM25/dense indexes, FastAPI app.

MEM1 and verl's search tool talk to a ``POST /retrieve`` endpoint with Search-R1's request and response
shapes; this package builds the corpus and index that endpoint serves and the server itself. Heavy
dependencies (bm25s, faiss, torch, fastapi) are imported by the submodules that need them, not here.
"""
