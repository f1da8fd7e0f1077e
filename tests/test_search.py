"""Search a published output: each document finds itself; the CLI prints the same as JSON."""

import json

import pytest
from embed_helpers import clean_texts, small_config, write_corpus

from jobs import search as job
from pipelines.embed import NoPublishedVersionError, run_embed
from pipelines.search import CorpusIndex, search

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
    assert job.main(["--index", str(tmp_path / "out"), "--query", clean_texts(10)[4], "--k", "1", "--json",
                     "--model", str(moved)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["hits"][0]["id"] == "m4"


# ------------------------------------------------------------------ issue 11: errors as one line, exit 2
def _search_job(argv, capsys):
    code = job.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return code, err


@pytest.mark.parametrize("flags, message", [
    (["--k", "0"], "--k must be at least 1"), (["--k", "-1"], "--k must be at least 1"),
    (["--query", ""], "query 2 is empty"), (["--query", " \n"], "query 2 is empty"),
])
def test_search_arguments_are_checked_before_anything_loads(flags, message, tmp_path, capsys):
    # the index does not exist: the argument error must come first, before any file or model is read
    code, err = _search_job(["--index", str(tmp_path / "nowhere"), "--query", "q", *flags], capsys)
    assert code == 2 and message in err


def _damage(published, tmp_path, how):
    import shutil

    from pipelines.embed import OutputLayout

    output = shutil.copytree(published, tmp_path / "out")
    version_dir = OutputLayout(output).current_dir()
    if how == "no CURRENT":
        (output / "CURRENT").unlink()
        return output, "no published version"
    if how == "garbage CURRENT":
        (output / "CURRENT").write_text("../../etc\n")
        return output, f"{output / 'CURRENT'}"
    if how == "empty CURRENT":
        (output / "CURRENT").write_text("")
        return output, f"{output / 'CURRENT'} is empty"
    if how == "missing version":
        shutil.rmtree(version_dir)
        return output, f"{version_dir}"
    if how == "corrupt manifest":
        (version_dir / "manifest.json").write_text("{not json")
        return output, f"{version_dir / 'manifest.json'}"
    (version_dir / "index.faiss").unlink()
    return output, f"{version_dir / 'index.faiss'}"


@pytest.mark.parametrize("how", ["no CURRENT", "garbage CURRENT", "empty CURRENT", "missing version",
                                 "corrupt manifest", "missing index.faiss"])
def test_a_damaged_index_is_one_line_naming_the_file(published, tmp_path, capsys, how):
    output, named = _damage(published, tmp_path, how)
    code, err = _search_job(["--index", str(output), "--query", "q"], capsys)
    assert code == 2 and named in err
    assert "jobs/embed_corpus.py" in err or "l2v-embed" in err  # says how to get a whole index back


def test_plain_output_keeps_each_hit_on_one_line():
    from pipelines.search import Hit

    line = job.format_hit(Hit(1, "two\nlines", 0.5, "some\ntext"))
    assert "\n" not in line and "'two\\nlines'" in line and "some text" in line
    assert job.format_hit(Hit(2, "plain-id", 0.25)).split() == ["2.", "0.2500", "plain-id"]
    passage = Hit(3, "doc4", 0.5, "the passage", doc_id="doc4", passage_id="doc4#2", chunk=2, char_start=90,
                  char_end=160)
    assert job.format_hit(passage) == "   3. 0.5000  doc4  [passage 2, chars 90-160]  the passage"
