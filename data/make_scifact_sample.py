"""Cut the demo corpus shipped in data/scifact-sample/ from BEIR SciFact (../shared/data/beir/scifact).

The sample holds the judged documents of the first QUERIES test queries (by numeric id) plus seeded
random distractors from the rest of the corpus, up to DOCS documents. Rerunning gives the same files.
Usage: python data/make_scifact_sample.py [path/to/beir/scifact]
"""

from __future__ import annotations

import gzip
import json
import random
import sys
from pathlib import Path

QUERIES, DOCS, SEED = 50, 500, 13
OUT = Path(__file__).parent / "scifact-sample"


def main(src: Path) -> None:
    with gzip.open(src / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        corpus = [json.loads(line) for line in fh]
    rows = [line.rstrip("\r\n").split("\t") for line in (src / "qrels" / "test.tsv").open(encoding="utf-8")][1:]
    test_ids = sorted({q for q, _, _ in rows}, key=int)[:QUERIES]
    qrels = [r for r in rows if r[0] in test_ids]
    judged = {d for _, d, _ in qrels}
    rest = sorted(d["_id"] for d in corpus if d["_id"] not in judged)
    keep = judged | set(random.Random(SEED).sample(rest, DOCS - len(judged)))
    OUT.joinpath("qrels").mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(OUT / "corpus.jsonl.gz", "wb", mtime=0) as fh:
        for doc in corpus:
            if doc["_id"] in keep:
                fh.write((json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8"))
    queries = {json.loads(line)["_id"]: line for line in (src / "queries.jsonl").open(encoding="utf-8")}
    (OUT / "queries.jsonl").write_text("".join(queries[q] for q in test_ids), encoding="utf-8")
    (OUT / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in qrels), encoding="utf-8")
    print(f"{len(keep)} docs ({len(judged)} judged), {len(test_ids)} queries, {len(qrels)} judgments -> {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[2] / "shared/data/beir/scifact"))
