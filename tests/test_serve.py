"""The Ray Serve service on localhost over real HTTP: the API contract, the openai client, the
bad-input table, following a publish (swap under load), refusing a broken version, and the page
in headless Chromium. One Serve for the module (tiny random encoders, tiny indexes built by the
real embed pipeline)."""

from __future__ import annotations

import base64
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from embed_helpers import clean_texts, small_config, write_corpus
from serve_helpers import KEY, KEY_ENV, call, free_port, publish_copy, wait_for

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install -e '.[serve]')")

from pipelines.embed import OutputLayout, run_embed  # noqa: E402
from pipelines.serve import ServiceConfig, build_app  # noqa: E402

N = 20
APP = "l2v-test"
TEXTS = clean_texts(N)


@pytest.fixture(scope="module")
def service(ray_session, tiny_encoder_dir, tmp_path_factory):
    from ray import serve

    corpus = write_corpus(tmp_path_factory.mktemp("corpus_a"), n=N, files=1, prefix="a")
    output = tmp_path_factory.mktemp("served")
    run_embed(small_config(corpus, output, tiny_encoder_dir))
    port = free_port()
    os.environ[KEY_ENV] = KEY
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = ServiceConfig(index=str(output), poll_s=0.2, replica_cpus=0, api_key_env=KEY_ENV, max_batch_size=8,
                           max_k=50, max_inputs=16, max_body_bytes=64 * 1024)
    serve.run(build_app(config), name=APP, route_prefix="/")
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", output=output, config=config)
    finally:
        serve.shutdown()
        os.environ.pop(KEY_ENV, None)


def health(service) -> dict:
    reply = call(service.url, "/health")
    assert reply.status == 200, reply.body
    return reply.body


def top_hit(service, text: str) -> tuple[str, str, float]:
    """(version, top id, top score) of one query; any failure raises."""
    reply = call(service.url, "/search", {"query": text, "k": 3})
    assert reply.status == 200, reply.body
    hit = reply.body["results"][0]["hits"][0]
    return reply.body["version"], hit["id"], hit["score"]


# ---------------------------------------------------------------------- the API contract
def test_health_page_and_key(service):
    body = health(service)
    layout = OutputLayout(service.output)
    assert body["status"] == "ok" and body["version"] == body["published"] == layout.current()
    assert body["vectors"] == N and body["dim"] == 64 and body["index_type"] == "Flat"
    assert body["encoder"]["identity"]["model"] == "tiny-random-llama" and body["loaded_at"]
    assert body["last_reload_error"] is None
    for key in (None, "wrong-key"):
        reply = call(service.url, "/health", key=key)
        assert reply.status == 401 and "API key" in reply.body["error"]["message"]
    page = call(service.url, "/", key=None)
    assert page.status == 200 and '<form id="form">' in page.body and "/search" in page.body


def test_search_answers_with_hits_and_the_version(service):
    reply = call(service.url, "/search", {"queries": [TEXTS[3], TEXTS[11]], "k": 4})
    assert reply.status == 200
    body = reply.body
    assert body["version"] == health(service)["version"] == reply.headers["x-l2v-version"] and body["k"] == 4
    assert [r["query"] for r in body["results"]] == [TEXTS[3], TEXTS[11]]
    first = body["results"][0]["hits"]
    assert [h["rank"] for h in first] == [1, 2, 3, 4] and set(first[0]) == {"rank", "id", "score", "text"}
    assert first[0]["id"] == "a3" and first[0]["score"] == pytest.approx(1.0, abs=1e-4) and first[0]["text"] == TEXTS[3]
    assert body["results"][1]["hits"][0]["id"] == "a11"
    assert call(service.url, "/search", {"query": TEXTS[5], "k": 200 // 4}).body["results"][0]["hits"][-1]["rank"] == N
    # an unchunked index has one vector per document: group_by changes nothing, hits keep their fields
    passages = call(service.url, "/search", {"queries": [TEXTS[3], TEXTS[11]], "k": 4, "group_by": "passage"})
    assert passages.status == 200 and passages.body == body and "group_by" not in body


def test_concurrent_requests_share_batches_and_get_their_own_rows(service, tiny_encoder_dir):
    from l2v_core import Encoder

    expected = Encoder.from_pretrained(str(tiny_encoder_dir)).encode(TEXTS)
    def embed(i):
        reply = call(service.url, "/v1/embeddings", {"input": TEXTS[i], "model": "l2v"})
        assert reply.status == 200, reply.body
        return np.array(reply.body["data"][0]["embedding"])
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(embed, range(N)))
    np.testing.assert_allclose(np.stack(got), expected, atol=1e-5)


def test_openai_client_float_and_base64(service, tiny_encoder_dir):
    openai = pytest.importorskip("openai", reason="the openai package is not installed (pip install -e '.[dev]')")
    from l2v_core import Encoder

    encoder = Encoder.from_pretrained(str(tiny_encoder_dir))
    expected = encoder.encode(TEXTS[:3])
    client = openai.OpenAI(base_url=service.url + "/v1", api_key=KEY, max_retries=0)
    as_float = client.embeddings.create(model="l2v", input=TEXTS[:3], encoding_format="float")
    by_default = client.embeddings.create(model="l2v", input=TEXTS[:3])  # the client asks for base64 itself
    for response in (as_float, by_default):
        assert [d.index for d in response.data] == [0, 1, 2] and response.model == "l2v"
        np.testing.assert_allclose(np.array([d.embedding for d in response.data]), expected, atol=1e-5)
        assert response.usage.prompt_tokens == response.usage.total_tokens == sum(encoder.tokenize(TEXTS[:3]).n_tokens)
    one = client.embeddings.create(model="l2v", input=TEXTS[0], encoding_format="float")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 64
    with pytest.raises(openai.NotFoundError, match="serves 'l2v'"):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=service.url + "/v1", api_key="nope", max_retries=0).embeddings.create(
            model="l2v", input="x"
        )


def test_base64_over_raw_http_is_little_endian_float32(service):
    floats = call(service.url, "/v1/embeddings", {"input": [TEXTS[1]], "model": "l2v"}).body["data"][0]["embedding"]
    reply = call(service.url, "/v1/embeddings", {"input": [TEXTS[1]], "model": "l2v", "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(reply.body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, np.array(floats, dtype=np.float32))


# ---------------------------------------------------------------------- bad input: 4xx JSON, never 500
BAD = [
    ("/search", b"{not json", {}, 400, "not valid JSON"),
    ("/search", b"", {}, 400, "body is empty"),
    ("/search", b"[1, 2]", {}, 400, "must be a JSON object"),
    ("/search", {"k": 3}, {}, 400, "exactly one of 'query'"),
    ("/search", {"query": "a", "queries": ["b"]}, {}, 400, "exactly one of 'query'"),
    ("/search", {"query": ""}, {}, 400, "empty or whitespace"),
    ("/search", {"queries": []}, {}, 400, "'queries' is empty"),
    ("/search", {"queries": ["ok", "  "]}, {}, 400, "queries[1]' is empty"),
    ("/search", {"query": 5}, {}, 400, "'query'"),
    ("/search", {"queries": ["a", 7]}, {}, 400, "queries[1]"),
    ("/search", {"query": "a", "k": 0}, {}, 400, "k must be between 1 and 50"),
    ("/search", {"query": "a", "k": 51}, {}, 400, "k must be between 1 and 50"),
    ("/search", {"query": "a", "k": "3"}, {}, 400, "'k'"),
    ("/search", {"query": "a", "k": True}, {}, 400, "'k'"),
    ("/search", {"query": "a", "topk": 3}, {}, 400, "unknown field 'topk'"),
    ("/search", {"query": "a", "group_by": "document"}, {}, 400, "'group_by'"),
    ("/search", {"queries": ["q"] * 17}, {}, 400, "at most 16"),
    ("/search", {"query": "x" * 70_000}, {}, 413, "at most 65536"),
    ("/v1/embeddings", {"input": "a"}, {}, 400, "'model'"),
    ("/v1/embeddings", {"model": "l2v"}, {}, 400, "'input'"),
    ("/v1/embeddings", {"model": "l2v", "input": [1, 2, 3]}, {}, 400, "token arrays"),
    ("/v1/embeddings", {"model": "l2v", "input": {"a": 1}}, {}, 400, "string or a list of strings"),
    ("/v1/embeddings", {"model": "l2v", "input": ["a", None]}, {}, 400, "input[1]' is null"),
    ("/v1/embeddings", {"model": "l2v", "input": []}, {}, 400, "'input' is empty"),
    ("/v1/embeddings", {"model": "l2v", "input": "a", "encoding_format": "int8"}, {}, 400, "encoding_format"),
    ("/v1/embeddings", {"model": "l2v", "input": "a", "dimensions": 32}, {}, 400, "'dimensions' must be 64"),
    ("/v1/embeddings", {"model": "other", "input": "a"}, {}, 404, "not served here"),
    ("/search", {"query": "a"}, {"key": None}, 401, "missing API key"),
    ("/search", {"query": "a"}, {"key": "bad"}, 401, "invalid API key"),
    ("/search", None, {"method": "GET"}, 405, "takes POST"),
    ("/nowhere", None, {}, 404, "no such path"),
]


@pytest.mark.parametrize("path,body,options,status,message", BAD, ids=[f"{i}-{b[3]}" for i, b in enumerate(BAD)])
def test_bad_input_gets_a_4xx_json_error(service, path, body, options, status, message):
    reply = call(service.url, path, body, **options)
    assert reply.status == status, reply.body
    assert isinstance(reply.body, dict) and message in reply.body["error"]["message"], reply.body


def test_an_instruction_that_leaves_no_room_is_a_400(service):
    reply = call(service.url, "/search", {"query": "a b c", "instruction": "word " * 200})
    assert reply.status == 400 and "no tokens left" in reply.body["error"]["message"]


# ---------------------------------------------------------------------- the page in a real browser
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def search_in_page(service, query: str, k: int, screenshot: Path | None = None) -> tuple[list[str], list[str], str]:
    """Search from the page in headless Chromium (typing the API key it asks for): the hits'
    meta lines and texts, and the version the page shows. Skips where Chromium or playwright is missing."""
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"Debian's chromium is not installed at {CHROMIUM} "
            "(apt-get install -y chromium; make setup does it as root)"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is not installed (pip install -e '.[dev]')"
    )
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(service.url + "/")
            page.wait_for_selector("#keybox", state="visible")  # /health answered 401: the page asks for the key
            page.fill("#key", KEY)
            page.dispatch_event("#key", "change")
            page.wait_for_function("document.getElementById('version').textContent !== '?'")
            page.fill("#query", query)
            page.fill("#k", str(k))
            page.click("#go")
            page.wait_for_selector("li.hit")
            hits = page.locator("li.hit")
            metas = [hits.nth(i).locator(".meta").inner_text() for i in range(hits.count())]
            texts = [hits.nth(i).locator(".text").inner_text() for i in range(hits.count())]
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
            return metas, texts, page.inner_text("#version")
        finally:
            browser.close()


def test_search_page_in_headless_chromium(service, tmp_path):
    metas, texts, version = search_in_page(service, TEXTS[7], 3, screenshot=tmp_path / "search-page.png")
    assert len(metas) == 3 and "a7" in metas[0] and texts[0] == TEXTS[7]
    assert version == health(service)["version"]
    assert (tmp_path / "search-page.png").stat().st_size > 1000


# ---------------------------------------------------------------------- following publishes
def test_a_chunked_version_answers_with_documents_or_passages(service, chunked_output):
    """A version of passages (--chunk-tokens, same encoder) is published: /search groups them by
    document unless group_by says "passage"; then the unchunked version is published back."""
    import pyarrow.parquet as pq

    before = health(service)["version"]
    output, texts = chunked_output
    chunked = OutputLayout(output).current_dir()
    target = pq.read_table(next((chunked / "vectors").glob("*.parquet"))).to_pylist()[4]
    name = publish_copy(service.output, chunked)
    try:
        body = wait_for(lambda: (b := health(service))["version"] == name and b, timeout=60, what=f"{name} served")
        assert body["chunking"] == {"chunk_tokens": 32, "chunk_overlap": 0}
        docs = call(service.url, "/search", {"query": target["text"], "k": 3})
        assert docs.status == 200 and docs.body["group_by"] == "doc", docs.body
        hits = docs.body["results"][0]["hits"]
        assert len({h["id"] for h in hits}) == 3 and hits[0]["id"] == hits[0]["doc_id"] == target["doc_id"]
        assert {k: hits[0][k] for k in ("passage_id", "chunk", "char_start", "char_end", "text")} == {
            "passage_id": target["id"], "chunk": target["chunk"], "char_start": target["char_start"],
            "char_end": target["char_end"], "text": target["text"]}
        passages = call(service.url, "/search", {"query": target["text"], "k": 10, "group_by": "passage"}).body
        assert passages["group_by"] == "passage" and passages["results"][0]["hits"][0]["id"] == target["id"]
        assert len(passages["results"][0]["hits"]) == 10 and len(texts) == 8  # more passages than documents
        metas, shown, _ = search_in_page(service, target["text"], 3)  # the page shows the best passage's span
        assert metas[0].startswith(f"1. {target['doc_id']} score ") and shown[0] == target["text"]  # spaces collapsed
        assert metas[0].endswith(f"passage {target['chunk']}, chars {target['char_start']}-{target['char_end']}")
    finally:
        OutputLayout(service.output).publish(before)
        wait_for(lambda: health(service)["version"] == before, timeout=60, what=f"{before} served again")


def test_swap_under_load_no_failures_and_answers_move(service, tmp_path, ray_session):
    """A version built with another encoder (seed 1) is published while 4 clients query: every
    answer is whole (the top hit is the query's own document with score 1, which only holds when
    the index and encoder of one version are used together) and each client moves from A to B."""
    from l2v_core.testing import save_tiny_encoder

    old = health(service)["version"]
    encoder_b = save_tiny_encoder(tmp_path / "encoder_b", seed=1)
    corpus_b = write_corpus(tmp_path / "corpus_b", n=N, files=1, prefix="b")
    built = run_embed(small_config(corpus_b, tmp_path / "out_b", encoder_b))
    answers, errors = [[] for _ in range(4)], []

    def client(c):
        for i in range(400):  # bounded; stops once this client has seen the new version for a while
            try:
                version, top, score = top_hit(service, TEXTS[(i * 3 + c) % N])
            except Exception as e:  # noqa: BLE001 - every failure is counted
                errors.append(repr(e))
                continue
            answers[c].append((version, top, score, (i * 3 + c) % N))
            if sum(v == built.version for v, *_ in answers[c]) >= 5:
                return

    threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: all(len(a) >= 3 for a in answers) or errors, timeout=60, what="every client to get answers")
    publish_copy(service.output, built.version_dir)
    for t in threads:
        t.join(120)
    assert errors == []
    for seen in answers:
        versions = [v for v, *_ in seen]
        assert versions[0] == old and versions[-1] == built.version
        assert versions == sorted(versions, key=lambda v: v == built.version)  # never back to the old one
        for version, top, score, i in seen:
            assert top == ("a" if version == old else "b") + str(i) and score == pytest.approx(1.0, abs=1e-4)
    body = health(service)
    assert body["version"] == built.version and body["status"] == "ok" and body["encoder"]["source"] == str(encoder_b)


def _truncate_index(version_dir: Path):
    path = version_dir / "index.faiss"
    path.write_bytes(path.read_bytes()[:100])


def _drop_id_map(version_dir: Path):
    (version_dir / "id_map.parquet").unlink()


def _index_of_another_dimension(version_dir: Path):
    import faiss

    index = faiss.IndexFlatIP(32)
    index.add(np.random.default_rng(0).standard_normal((N, 32)).astype(np.float32))
    faiss.write_index(index, str(version_dir / "index.faiss"))


@pytest.mark.parametrize("damage,message", [(_truncate_index, "RuntimeError"), (_drop_id_map, "id_map.parquet"),
                                            (_index_of_another_dimension, "dimensions differ")])
def test_a_broken_new_version_is_refused_and_the_old_keeps_serving(service, damage, message):
    before = health(service)
    layout = OutputLayout(service.output)
    name, target = layout.new_version()
    shutil.copytree(layout.version_dir(before["version"]), target, dirs_exist_ok=True)
    damage(target)
    layout.publish(name)
    body = wait_for(lambda: (b := health(service))["last_reload_error"] and
                    b["last_reload_error"]["version"] == name and b, timeout=30, what=f"{name} to be refused")
    assert message in body["last_reload_error"]["error"]
    assert body["version"] == before["version"] and body["published"] == name and body["status"] == "degraded"
    version, top, _ = top_hit(service, TEXTS[2])
    assert version == before["version"] and top.endswith("2")
    layout.publish(before["version"])  # back to a healthy pointer for the next test
    wait_for(lambda: health(service)["status"] == "ok", timeout=30, what="status ok again")


# ---------------------------------------------------------------------- a crashed replica
@pytest.mark.slow  # ~10-20 s: Serve notices the death, starts a process, loads the encoder again
def test_a_killed_replica_is_restarted_and_later_requests_succeed(service):
    import signal

    before = health(service)
    os.kill(before["replica"]["pid"], signal.SIGKILL)

    def restarted():
        try:
            reply = call(service.url, "/health", timeout=5)
        except OSError:
            return None
        return reply.status == 200 and reply.body["replica"]["pid"] != before["replica"]["pid"]

    wait_for(restarted, timeout=90, every=0.5, what="Serve to restart the killed replica")
    version, top, score = top_hit(service, TEXTS[4])
    assert version == before["version"] and top.endswith("4") and score == pytest.approx(1.0, abs=1e-4)


# ---------------------------------------------------------------------- the command line (no Ray started)
def _serve_job():
    import importlib

    return importlib.import_module("jobs.serve")


@pytest.mark.parametrize("args,message", [
    (["--index", "/nonexistent/index"], "--index /nonexistent/index is not a folder"),
    (["--index", "{empty}"], "has no published version"),
    (["--index", "{served}", "--port", "0"], "--port must be between 1 and 65535"),
    (["--index", "{served}", "--replicas", "0"], "--replicas: "),
    (["--index", "{served}", "--api-key-env", "L2V_TEST_UNSET_VARIABLE"], "L2V_TEST_UNSET_VARIABLE"),
    (["--index", "{served}", "--model", "/nonexistent/encoder"], "--model /nonexistent/encoder does not exist"),
])
def test_cli_usage_errors_exit_2_with_one_line(service, tmp_path, capsys, args, message):
    args = [a.format(empty=tmp_path, served=service.output) for a in args]
    assert _serve_job().main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ": error: " in err[0] and message in err[0], err


def test_cli_help_shows_defaults_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _serve_job().main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "127.0.0.1)" in out and "exit codes:" in out and "  2  bad flags" in out


def test_the_rayservice_args_are_a_valid_service_config():
    import yaml
    from pydantic import ValidationError

    manifest = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "deploy" / "kuberay" / "rayservice.yaml").read_text()
    )
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    app = serve_config["applications"][0]
    assert app["import_path"] == "pipelines.serve:build_app" and serve_config["http_options"]["port"] == 8000
    config = ServiceConfig.model_validate(app["args"])
    assert config.index == "/shared/index" and config.api_key_env == "L2V_API_KEY"
    assert ServiceConfig.model_validate({"index": "/x", "replicas": "2"}).replicas == 2  # `serve run ... replicas=2`
    with pytest.raises(ValidationError, match="replica"):
        ServiceConfig.model_validate({"index": "/x", "replica": 2})
