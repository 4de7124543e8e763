"""Stored Responses shared by replicas through Redis (`[responses]` backend
`redis`, the default with `[redis]`): a conversation started on one replica
continues on another, `GET`/`DELETE` work from any, keys still scope them;
without Redis each replica only knows its own."""

import httpx
import openai
import pytest

from conftest import Gateway, key_hash, wait_for

CONFIG = """
{redis}
[[providers]]
name = "mock"
kind = "mock"
tokens_per_response = 5

[[models]]
name = "mock-1"
targets = [{{ provider = "mock" }}]

[[keys]]
name = "a"
sha256 = "{a}"

[[keys]]
name = "b"
sha256 = "{b}"
"""


def config(redis_url=None, backend=None):
    redis = f'[redis]\nurl = "{redis_url}"\n' if redis_url else ""
    if backend:
        redis += f'\n[responses]\nbackend = "{backend}"\n'
    return CONFIG.format(redis=redis, a=key_hash("sk-a-123456"), b=key_hash("sk-b-123456"))


def sub(tmp_path, name):
    d = tmp_path / name
    d.mkdir()
    return d


def client(g, key="sk-a-123456"):
    return openai.OpenAI(base_url=g.base_url, api_key=key, max_retries=0)


def test_a_conversation_moves_between_replicas(tmp_path, redis_server):
    one = Gateway(config(redis_server.url), tmp_path=sub(tmp_path, "1"))
    two = Gateway(config(redis_server.url), tmp_path=sub(tmp_path, "2"))
    try:
        first = client(one).responses.create(model="mock-1", input="My name is Ada.")
        # Written in the background, with the configured lifetime.
        wait_for(lambda: redis_server.client.ttl(f"sluice:response:{first.id}") > 29 * 86400,
                 what="the stored turn in Redis")
        # The other replica continues it: the earlier turn reaches the model.
        second = client(two).responses.create(model="mock-1", input="What is my name?",
                                              previous_response_id=first.id)
        assert second.status == "completed"
        got = client(two).responses.retrieve(first.id)
        assert got.id == first.id and got.output_text == first.output_text
        # Streamed turns are shared too.
        with client(one).responses.stream(model="mock-1", input="More.",
                                          previous_response_id=second.id) as s:
            for _ in s:
                pass
            third = s.get_final_response()
        assert client(two).responses.retrieve(third.id).output_text == third.output_text
        # Another key sees nothing, on either replica.
        with pytest.raises(openai.NotFoundError):
            client(two, "sk-b-123456").responses.retrieve(first.id)
        # Deleted on one, gone on both.
        client(two).responses.delete(first.id)
        assert "deleted" in redis_server.client.get(f"sluice:response:{first.id}")
        with pytest.raises(openai.NotFoundError):
            client(one).responses.retrieve(first.id)
        with pytest.raises(openai.NotFoundError):
            client(one).responses.create(model="mock-1", input="x", previous_response_id=first.id)
    finally:
        one.stop()
        two.stop()


def test_local_backend_keeps_responses_to_one_replica(tmp_path, redis_server):
    one = Gateway(config(redis_server.url, backend="local"), tmp_path=sub(tmp_path, "1"))
    two = Gateway(config(redis_server.url, backend="local"), tmp_path=sub(tmp_path, "2"))
    try:
        r = client(one).responses.create(model="mock-1", input="hi")
        assert client(one).responses.retrieve(r.id).id == r.id
        with pytest.raises(openai.NotFoundError):
            client(two).responses.retrieve(r.id)
        assert redis_server.client.exists(f"sluice:response:{r.id}") == 0
    finally:
        one.stop()
        two.stop()


def test_redis_down_degrades_to_memory(tmp_path, redis_server):
    g = Gateway(config(redis_server.url), tmp_path=tmp_path)
    try:
        redis_server.stop()
        r = client(g).responses.create(model="mock-1", input="hi")
        assert client(g).responses.retrieve(r.id).id == r.id
        follow = client(g).responses.create(model="mock-1", input="again", previous_response_id=r.id)
        assert follow.status == "completed"
        with pytest.raises(openai.NotFoundError):
            client(g).responses.retrieve("resp_" + "0" * 32)
    finally:
        g.stop()
        redis_server.start()


def test_backend_redis_needs_redis(tmp_path):
    from conftest import SLUICE
    import subprocess
    f = tmp_path / "c.toml"
    f.write_text(config(backend="redis"))
    r = subprocess.run([str(SLUICE), "check-config", str(f)], capture_output=True, text=True)
    assert r.returncode != 0 and "needs [redis] url" in r.stderr + r.stdout
