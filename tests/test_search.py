"""Search a published output: each document finds itself; the CLI prints the same as JSON."""

import importlib.util
import json
from pathlib import Path

import pytest
from embed_helpers import clean_texts, small_config, write_corpus

from pipelines.embed import NoPublishedVersionError, run_embed
from pipelines.search import CorpusIndex, search

REPO = Path(__file__).resolve().parents[1]
N = 30


@pytest.fixture(scope="module")
def published(ray_session, tiny_encoder_dir, tmp_path_factory):
    corpus = write_corpus(tmp_path_factory.mktemp("corpus"), n=N, files=1, prefix="s")
    output = tmp_path_factory.mktemp("out")
    run_embed(small_config(corpus, output, tiny_encoder_dir))
    return output


def test_each_document_is_its_own_top_hit(published):
    index = CorpusIndex.open(published)
    texts = clean_texts(N)
    results = index.search(texts, k=3)
    assert [hits[0].id for hits in results] == [f"s{i}" for i in range(N)]
    top = results[5][0]
    assert top.rank == 1 and top.score == pytest.approx(1.0, abs=1e-4) and top.text == texts[5]
    assert results[5][0].score >= results[5][1].score >= results[5][2].score


def test_search_function_and_encoder_mismatch(published, tiny_encoder_dir, tmp_path):
    hits = search(published, clean_texts(N)[7], k=2)
    assert [h.id for h in hits][:1] == ["s7"] and len(hits) == 2
    from l2v_core import Encoder

    other = Encoder.from_pretrained(str(tiny_encoder_dir), pooling="last_token")
    with pytest.raises(ValueError, match="differs from the one that built version .* in pooling"):
        CorpusIndex.open(published, encoder=other)
    with pytest.raises(NoPublishedVersionError, match="no published version"):
        CorpusIndex.open(tmp_path)


def test_search_cli_json(published, capsys):
    spec = importlib.util.spec_from_file_location("search_job", REPO / "jobs" / "search.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.main(["--index", str(published), "--query", clean_texts(N)[2], "--query", clean_texts(N)[9],
                     "--k", "2", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["hits"][0]["id"] for line in lines] == ["s2", "s9"]
    assert set(lines[0]["hits"][0]) == {"rank", "id", "score", "text"}


def test_search_cli_with_a_moved_encoder_keeps_the_index_settings(ray_session, tiny_encoder_dir, tmp_path, capsys):
    import shutil

    corpus = write_corpus(tmp_path / "corpus", n=10, files=1, prefix="m")
    run_embed(small_config(corpus, tmp_path / "out", tiny_encoder_dir, max_length=24))  # not the encoder's own
    moved = shutil.copytree(tiny_encoder_dir, tmp_path / "moved-encoder")
    spec = importlib.util.spec_from_file_location("search_job", REPO / "jobs" / "search.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.main(["--index", str(tmp_path / "out"), "--query", clean_texts(10)[4], "--k", "1", "--json",
                     "--model", str(moved)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["hits"][0]["id"] == "m4"
