"""What several benchmarks share: the --smoke/--out arguments, the report writer (with the CPU model), a small
BEIR corpus cut from the demo sample for smoke runs, and the Prefect server."""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
SAMPLE = REPO / "data" / "scifact-sample"  # the demo corpus shipped in the repo: 500 docs, 50 queries (BEIR)
SCIFACT = REPO.parent / "shared" / "data" / "beir" / "scifact"  # the full corpus: 5,183 docs, 300 test queries

# This checkout's code in subprocesses and Ray workers too, even where the venv's editable install points at
# another checkout (the scripts put REPO first on their own sys.path before importing this module).
os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
for _key, _value in (("DO_NOT_TRACK", "1"), ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
                     ("RAY_USAGE_STATS_ENABLED", "0"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_key, _value)


def parse_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The script's own arguments plus --smoke and --out; creates the out folder (absolute in args.out)."""
    parser.add_argument("--smoke", action="store_true",
                        help="the same code path on a tiny input, in seconds; targets are reported, not enforced")
    parser.add_argument("--out", type=Path, default=OUT, help=f"report and working folder (default {OUT})")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def cpu_model() -> str:
    """The CPU as the kernel plan names it (the model name lscpu shows, with family and model) and its widest
    vector or matrix unit: a virtual machine's "AMD EPYC" is a Zen 3 with AVX2 or a Zen 5 with AVX-512."""
    from pipeline.models.kernel_plan import cpu_flags
    from pipeline.models.kernel_plan import cpu_model as named

    flags = cpu_flags()
    return f"{named()}; {next((u for u in ('amx_bf16', 'avx512_bf16', 'avx512f', 'avx2') if u in flags), 'no avx2')}"


def write_report(args: argparse.Namespace, name: str, report: dict, md: str) -> None:
    """args.out/NAME.json (the report plus `cpu_model`, `cpus`, `smoke`) and args.out/NAME.md (md plus a CPU line)."""
    machine = {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "smoke": args.smoke}
    (args.out / f"{name}.json").write_text(json.dumps({**report, **machine}, indent=2))
    md = md.rstrip("\n") + (f"\n\nCPU: {machine['cpu_model']} ({machine['cpus']} CPUs)"
                            f"{'; smoke run (tiny input, targets not enforced)' if args.smoke else ''}.\n")
    (args.out / f"{name}.md").write_text(md)
    print(md)


def sample_subset(folder: Path, docs: int, queries: int) -> Path:
    """A BEIR folder (corpus.jsonl.gz, queries.jsonl, qrels/test.tsv) cut from the demo sample: the first `queries`
    judged queries, every document they judge, then other documents in corpus order up to `docs` in all."""
    qrels = [line.split("\t") for line in (SAMPLE / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    keep = list(dict.fromkeys(q for q, _, _ in qrels))[:queries]
    judged = {d for q, d, _ in qrels if q in keep}
    with gzip.open(SAMPLE / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    chosen = [r for r in rows if r["_id"] in judged]
    chosen += [r for r in rows if r["_id"] not in judged][: max(docs - len(chosen), 0)]
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in chosen)
    (folder / "queries.jsonl").write_text("".join(line + "\n" for line in
                                                  (SAMPLE / "queries.jsonl").read_text().splitlines()
                                                  if json.loads(line)["_id"] in keep))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                               "".join("\t".join(x) + "\n" for x in qrels if x[0] in keep))
    return folder


def smoke_overrides(folder: Path, docs: int, queries: int = 10) -> dict[str, object]:
    """Config overrides for a smoke run of a flow: a corpus cut from the demo sample into `folder`, embedded by
    Ray actors as a full corpus is (a run this small would otherwise embed in the flow's own process)."""
    return {"corpus.source": str(sample_subset(folder, docs, queries)), "run.local_embed_max_chunks": 0}


def synthetic_corpus(path: Path, docs: int, seed: int, words_from: Path = SAMPLE, mean_words: int = 200,
                     first_id: int = 0) -> None:
    """Documents of words drawn from SciFact's vocabulary, lengths log-normal around `mean_words` words, ids
    d<first_id>.. (a later corpus can continue where one ended)."""
    import numpy as np

    with gzip.open(words_from / "corpus.jsonl.gz", "rt") as fh:
        words = sorted({w for line in fh for w in json.loads(line)["text"].split()})
    rng = np.random.default_rng(seed)
    with path.open("w") as out:
        for i in range(first_id, first_id + docs):
            n = int(np.clip(rng.lognormal(np.log(mean_words), 0.4), 5, 5 * mean_words))
            text = " ".join(words[j] for j in rng.integers(0, len(words), n))
            out.write(json.dumps({"_id": f"d{i}", "title": f"document {i}", "text": text}) + "\n")


@contextlib.contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """The PREFECT_API_URL to use: the caller's, or a loopback server started here."""
    if url := os.environ.get("PREFECT_API_URL"):
        yield url
        return
    from flows.local_server import loopback_server

    with loopback_server(home) as url:
        yield url


def flow_run_seconds(api: str, run_id: str) -> float:
    """The flow run's total run time as Prefect's server recorded it (a run id is `<job>-<flow run id>`)."""
    import urllib.request

    with urllib.request.urlopen(f"{api}/flow_runs/{run_id.split('-', 1)[1]}", timeout=10) as resp:
        return round(json.loads(resp.read())["total_run_time"], 2)
