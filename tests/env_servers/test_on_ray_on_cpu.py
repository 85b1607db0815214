"""Environment servers started on a Ray cluster (a local one here): ``mem1 serve retrieval ... --on-ray`` and the
recipes' ``mem1_servers``, each a detached named actor that answers on its node's address, reused by name."""

from __future__ import annotations

import httpx
import pytest
from omegaconf import OmegaConf

from env_servers.on_ray import server_gpus, server_name, strip_on_ray_flags
from verl_mem1.train import start_configured_servers


def test_on_ray_flags_are_stripped_in_both_spellings():
    argv = ["retrieval", "--index", "idx", "--on-ray", "--ray-name", "r1", "--ray-cpus=2", "--port", "9"]
    assert strip_on_ray_flags(argv) == ["retrieval", "--index", "idx", "--port", "9"]
    assert server_name(["retrieval", "--index", "a"]) != server_name(["retrieval", "--index", "b"])


def test_a_server_on_cuda_reserves_its_gpus():
    """Issue 23, finding 10: an actor reserving no GPU sees none (or all of them) outside Ray's accounting."""
    assert server_gpus(["retrieval", "--index", "idx"]) == 0
    assert server_gpus(["retrieval", "--index", "idx", "--device", "cpu"]) == 0
    assert server_gpus(["retrieval", "--index", "idx", "--device", "cuda"]) == 1
    assert server_gpus(["llm", "--model", "m", "--device=cuda:1"]) == 1
    assert server_gpus(["retrieval", "--index", "idx", "--device", "cuda", "--faiss-gpus", "2"]) == 2
    assert server_gpus(["retrieval", "--index", "idx", "--faiss-gpus=0", "--device", "cuda"]) == 1


def test_a_cuda_server_holds_its_gpu_in_rays_accounting(bm25_index):
    """On a cluster with one (logical) GPU, the server started with ``--device cuda`` holds it while it runs (a BM25
    index ignores the device, so the server itself runs on the CPU here)."""
    import ray

    from env_servers.on_ray import serve_on_ray

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        url = serve_on_ray(["retrieval", "--index", str(bm25_index), "--device", "cuda"], name="cuda-retriever")
        assert httpx.get(url + "/health", timeout=10).status_code == 200
        assert ray.available_resources().get("GPU", 0) == 0 and ray.cluster_resources()["GPU"] == 1
    finally:
        ray.shutdown()


@pytest.fixture
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_retrieval_server_runs_in_a_ray_actor_and_is_reused(ray_cluster, bm25_index, bm25_retriever, capsys):
    from verl_mem1.cli import main

    assert main(["serve", "retrieval", "--index", str(bm25_index), "--on-ray", "--ray-name", "retriever"]) == 0
    url = capsys.readouterr().out.strip().splitlines()[-1]
    assert url.startswith("http://") and not url.startswith("http://127.0.0.1:8000")
    query = "Which city hosted Tinted Windows' first performance?"
    answer = httpx.post(url + "/retrieve", json={"queries": [query], "topk": 2}, timeout=30).json()
    got = [item["contents"] for item in answer["result"][0]]
    assert got == [doc["contents"] for doc, _ in bm25_retriever.search([query], topk=2)[0]]

    # the recipe's mem1_servers: started (or found by name) before training, its URL put into the mem1 section
    cfg = OmegaConf.create({"mem1": {"retriever_url": "http://127.0.0.1:8000"}})
    cfg.mem1_servers = [f"retrieval --index {bm25_index}"]
    urls = start_configured_servers(cfg)
    assert urls == {"retriever_url": cfg.mem1.retriever_url} and cfg.mem1.retriever_url.startswith("http://")
    assert httpx.get(cfg.mem1.retriever_url + "/health", timeout=10).status_code == 200


def test_mem1_servers_must_be_serve_commands():
    cfg = OmegaConf.create({"mem1": {}, "mem1_servers": ["train --config-name qa"]})
    with pytest.raises(ValueError, match="not a `mem1 serve` command"):
        start_configured_servers(cfg)
