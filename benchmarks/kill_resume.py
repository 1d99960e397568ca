"""Kill and resume: total time of a run whose driver is killed halfway and then resumed with the same run id,
against an uninterrupted run, and proof that both publish identical snapshots (chunk ids, vectors, indexes).

Every run is its own `embedpipe run CONFIG --json` subprocess (the driver really exits), on the demo corpus
(configs/demo.yaml: 500 SciFact abstracts) with `run.shards` overridden to --shards:
    (i)   uninterrupted, run id `clean`, fresh storage root `clean/`
    (ii)  killed: EMBEDPIPE_FAULT_EXIT_AFTER_SHARDS=--kill-after makes the driver `os._exit(18)` once that many
          shards are committed (operators/faults.py), fresh storage root `killed/`; then the resume: the same
          command, run id and root without the fault (committed shards are skipped)
    (iii) a rerun of (i)'s finished run id with --full (without it, live is current: nothing is read or published):
          every shard is committed, so this is the fixed cost a restart pays (process and imports, prepare, Ray
          start, actor start and model loads, index, evaluate, publish)
Fresh roots per scenario keep the embedding cache (kept under the root) from making a later run faster. One
Prefect server serves every run (its start is not counted: a server per run would add ~12 s to each). Identity:
the two published snapshots' ids.parquet (chunk ids in FAISS row order) as tables, and the sha256 of every file
in their manifests (vectors.f16.npy, each index/*.faiss, ids.parquet). Writes
benchmarks/out/kill_resume.{json,md}; the storage roots stay in benchmarks/out/kill_resume/ until the next run.

Usage (from the repository root):
    .venv/bin/python benchmarks/kill_resume.py                           # demo, 8 shards, kill after 4
    .venv/bin/python benchmarks/kill_resume.py --shards 4 --kill-after 2
    .venv/bin/python benchmarks/kill_resume.py --set model.name=wordllama-l2-supercat  # quick (static model)
    .venv/bin/python benchmarks/kill_resume.py --smoke --out /tmp/x   # 40 docs, 4 shards, kill after 2
--smoke runs on 40 documents of the demo sample with Ray actors as the demo corpus would (local_embed_max_chunks 0).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's pipeline, even where the venv's editable install names another

from benchmarks.common import parse_args, prefect_server, smoke_overrides, write_report  # noqa: E402

EXIT_CODE = 18  # operators/faults.py: the driver's fault exit


def committed_shards(root: Path, run_id: str) -> int:
    return len(list((root / "runs" / run_id / "shards").glob("*/_SUCCESS")))


def compare(clean_url: str, resumed_url: str) -> dict:
    """Chunk ids row by row, then every manifest file's sha256 recomputed from its bytes."""
    from pipeline.snapshots.snapshot import Snapshot, sha256

    a, b = Snapshot.open(clean_url), Snapshot.open(resumed_url)
    files = {}
    for name in sorted(set(a.manifest["files"]) | set(b.manifest["files"])):
        digests = [sha256(s.read_verified(name)) if name in s.manifest["files"] else None for s in (a, b)]
        files[name] = {"clean": digests[0], "resumed": digests[1], "equal": digests[0] == digests[1]}
    return {"ids_rows": a.ids.height, "ids_equal": a.ids.equals(b.ids), "files": files,
            "all_equal": a.ids.equals(b.ids) and all(f["equal"] for f in files.values())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--kill-after", type=int, default=None, help="committed shards before the exit (shards/2)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run, e.g. model.name=wordllama-l2-supercat (a quick check)")
    args = parse_args(parser)
    work = args.out / "kill_resume"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if args.smoke:
        args.shards = 4
        args.sets = [f"{k}={v}" for k, v in smoke_overrides(work / "smoke-corpus", docs=40).items()] + args.sets
    kill_after = args.kill_after or args.shards // 2
    base_env = {**os.environ, "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false",
                # the driver and its Ray workers import this checkout
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    runs: dict[str, dict] = {}

    def run(name: str, root: Path, run_id: str, expect: int, *flags: str, **faults: str) -> dict:
        sets = [f"storage.root={root}", f"run.shards={args.shards}", "run.keep_work=true", *args.sets]  # count shards
        cmd = [sys.executable, "-m", "flows.cli", "run", args.config, *[x for kv in sets for x in ("--set", kv)],
               "--run-id", run_id, "--json", "--no-example", *flags]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env={**base_env, **faults}, capture_output=True, text=True, timeout=1800)
        wall = round(time.perf_counter() - start, 2)
        (work / f"{name}.stderr.log").write_text(proc.stderr)
        if proc.returncode != expect:
            raise RuntimeError(f"{name}: exit {proc.returncode}, expected {expect}; stderr:\n{proc.stderr[-3000:]}")
        summary = json.loads(proc.stdout) if expect == 0 else {}
        runs[name] = {"wall_s": wall, "exit": proc.returncode, "committed_shards_after": committed_shards(root, run_id),
                      "counts": summary.get("counts", {}), "timings_s": summary.get("timings_s", {}),
                      "snapshot": summary.get("snapshot")}
        print(f"{name}: {wall:.1f} s, exit {proc.returncode}, {runs[name]['committed_shards_after']} shards committed",
              flush=True)
        return runs[name]

    with prefect_server(work / "prefect-home") as api:
        base_env["PREFECT_API_URL"] = api
        clean = run("uninterrupted", work / "clean", "clean", 0)
        killed = run("killed", work / "killed", "killed", EXIT_CODE, EMBEDPIPE_FAULT_EXIT_AFTER_SHARDS=str(kill_after),
                     EMBEDPIPE_FAULT_ONCE=str(work / "fault-fired"))
        published_by_killed = (work / "killed" / "snapshots").exists()
        resumed = run("resumed", work / "killed", "killed", 0)
        rerun = run("rerun_finished", work / "clean", "clean", 0, "--full")
    identity = compare(clean["snapshot"], resumed["snapshot"])
    identity_rerun = compare(clean["snapshot"], rerun["snapshot"])

    from pipeline.config_loader import load_config

    total = killed["wall_s"] + resumed["wall_s"]
    embed = {k: runs[k]["timings_s"].get("embed") for k in ("uninterrupted", "resumed", "rerun_finished")}
    report = {
        "config": args.config, "overrides": args.sets, "shards": args.shards, "kill_after": kill_after,
        "chunks": clean["counts"].get("chunks"),
        "actors": load_config(str(REPO / args.config), dict(kv.split("=", 1) for kv in args.sets)).run.actors,
        "runs": runs,
        "killed_plus_resumed_s": round(total, 2),
        "ratio_killed_plus_resumed_over_uninterrupted": round(total / clean["wall_s"], 3),
        "extra_s": round(total - clean["wall_s"], 2),
        "restart_cost_s": rerun["wall_s"],
        "embed_stage_s": embed,
        "killed_run_published": published_by_killed,
        "identical_snapshots": identity,
        "rerun_identical": identity_rerun["all_equal"],
        "load_1min_end": round(os.getloadavg()[0], 2),
    }
    write_report(args, "kill_resume", report, markdown(report))
    return 0 if identity["all_equal"] and not published_by_killed else 1


def markdown(r: dict) -> str:
    runs = r["runs"]
    u, k, s, f = runs["uninterrupted"], runs["killed"], runs["resumed"], runs["rerun_finished"]
    sc = s["counts"]

    def stages(run: dict) -> str:
        return ", ".join(f"{name} {sec}" for name, sec in run["timings_s"].items())

    ratio = r["ratio_killed_plus_resumed_over_uninterrupted"]
    rows = [
        ("(i) uninterrupted", u["wall_s"], f"{u['counts'].get('shards_embedded')} shards embedded; {stages(u)}"),
        ("(ii) killed", k["wall_s"], f"exit {k['exit']} after {k['committed_shards_after']} shards committed "
         f"(fault at {r['kill_after']}); nothing published: {not r['killed_run_published']}"),
        ("(ii) resumed, same run id", s["wall_s"],
         f"{sc.get('shards_skipped')} shards skipped, {sc.get('shards_embedded')} embedded; {stages(s)}"),
        ("**(ii) killed + resumed**", r["killed_plus_resumed_s"], f"**{ratio}x** (i), +{r['extra_s']} s"),
        ("(iii) rerun of a finished run id", f["wall_s"],
         f"all shards skipped: the fixed cost of a restart; {stages(f)}"),
    ]
    files = r["identical_snapshots"]["files"]
    overrides = f" ({', '.join(r['overrides'])})" if r["overrides"] else ""
    # What a restart pays before any shard is embedded, read off (iii): time outside the flow's stages
    # (interpreter, imports, Prefect flow run, Ray shutdown) and an embed stage with nothing to embed.
    outside = round(f["wall_s"] - sum(f["timings_s"].values()), 2)
    start_up = f["timings_s"]["embed"]
    return "\n".join([
        f"# Kill and resume: `{r['config']}`{overrides}, {r['chunks']} chunks, {r['shards']} shards, "
        f"{r['actors']} actors", "",
        "| run | wall s | notes (stage seconds) |", "|---|---|---|", *[f"| {a} | {b} | {c} |" for a, b, c in rows], "",
        f"Paid again by the resume, from (iii): {outside} s outside the flow's stages (interpreter and imports, "
        f"Prefect flow run, Ray shutdown) and {start_up} s of embed stage with nothing to embed (Ray start, "
        f"{r['actors']} actor starts and model loads, shard markers read).", "",
        f"Snapshots of (i) and (ii): ids.parquet equal row by row ({r['identical_snapshots']['ids_rows']} chunks): "
        f"**{r['identical_snapshots']['ids_equal']}**; every file's sha256 equal: "
        f"**{r['identical_snapshots']['all_equal']}**; (iii)'s snapshot equal too: {r['rerun_identical']}.", "",
        "| file | sha256 (i) | sha256 (ii) | equal |", "|---|---|---|---|",
        *[f"| {name} | {v['clean'][:16]}... | {v['resumed'][:16]}... | {v['equal']} |"
          for name, v in files.items()], "",
        f"Load average (1 min) at the end: {r['load_1min_end']}.", ""])


if __name__ == "__main__":
    raise SystemExit(main())
