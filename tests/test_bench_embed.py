"""benchmarks/bench_embed.py: the long-document corpus (WikiText-2 articles) and the chunking
arguments, checked before anything loads. The figures live in the benchmark's output."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_embed", REPO / "benchmarks" / "bench_embed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wikitext_articles_are_documents_with_titles_and_paragraphs(bench, tmp_path):
    raw = tmp_path / "wiki.test.raw"
    raw.write_bytes(b" = Robert Boulter = \r\n Robert Boulter is an actor . \r\n = = Career = = \r\n"
                    b" In 2006 , he starred . \r\n = Du Fu = \r\n Du Fu was a poet . \r\n = Empty = \r\n")
    assert bench.wikitext_articles(raw) == [
        {"title": "Robert Boulter", "text": "Robert Boulter is an actor .\n\n= = Career = =\n\nIn 2006 , he starred ."},
        {"title": "Du Fu", "text": "Du Fu was a poet ."},
    ]


def test_chunking_arguments(bench, capsys):
    args = bench.parse_args(["--corpus", "wikitext", "--chunk-tokens", "128", "--chunk-overlap", "16"])
    assert (args.corpus, args.chunk_tokens, args.chunk_overlap) == ("wikitext", 128, 16)
    assert bench.parse_args([]).chunk_tokens is None
    for argv, message in ((["--chunk-overlap", "8"], "--chunk-overlap needs --chunk-tokens"),
                          (["--chunk-tokens", "256"], "between 8 and --max-length (128), not 256"),
                          (["--chunk-tokens", "4"], "not 4")):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
        assert message in capsys.readouterr().err
