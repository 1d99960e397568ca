"""An incremental build's IVF merge at scale: live's lists (the kept rows' codes, renumbered) merged with the redone
rows' shard parts (pipeline/index/assemble.py merge_ivf with KeptLists), against a full build's merge of every row's
part, at --rows and --scale x --rows.

Each size: a live IVF-PQ version of N rows (IVF --lists, PQ48: the 48-byte codes of the default ivfpq at 384 dims;
the codes are random, which a merge does not read), a build that redoes --redone of its rows spread over --shards
shards and keeps the others. Each merge runs in a fresh process that reports its seconds and its peak anonymous
memory (RssAnon sampled every 5 ms: the lists' files are mapped, so their pages are the page cache's, not the
process's). Reported: both ways' seconds and peaks, and whether the two files are the same bytes.
Target: from N to 4N rows the kept merge's peak grows by under a quarter of what holding the added rows' lists would
take (3N x 56 bytes). Writes benchmarks/out/kept_merge.{json,md}. About 15 seconds on 2 CPUs (disk: ~1 GB).
--smoke: 20,000 and 80,000 rows over 64 lists and 4 shards; exit 0 whatever the memory, as long as the files are the
same.

Usage: .venv/bin/python benchmarks/kept_merge.py [--rows 1000000 --scale 4 --lists 4096 --shards 64] [--smoke]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import parse_args, write_report  # noqa: E402

SMOKE = {"rows": 20_000, "lists": 64, "shards": 4}
DIMS, CODE = 48, 48  # PQ48 over 48 dims: 48-byte codes, a training in seconds
BLOCK = 100_000  # rows generated at a time


def codes_of(rows: np.ndarray, nlist: int) -> np.ndarray:
    """The standalone codes (list number, then the PQ code) of `rows` (increasing), the same whichever set asks."""
    out = []
    for block in np.unique(rows // BLOCK):
        rng = np.random.default_rng(int(block))
        list_bytes = 1 if nlist <= 256 else 2  # FAISS's coarse code: the list number in as few bytes as hold it
        lists = rng.integers(0, nlist, BLOCK).astype("<u2").view(np.uint8).reshape(BLOCK, 2)[:, :list_bytes]
        codes = np.hstack([lists, rng.integers(0, 256, (BLOCK, CODE), dtype=np.uint8)])
        out.append(codes[rows[rows // BLOCK == block] - block * BLOCK])
    return np.concatenate(out)


def part_file(empty: bytes, path: Path, rows: np.ndarray, nlist: int) -> Path:
    """A shard's IVF file holding `rows` (ids and codes), as a build's worker writes one."""
    import faiss

    from pipeline.index.faiss_ops import from_bytes

    index = from_bytes(empty, False)
    for a in range(0, len(rows), BLOCK):
        chunk = rows[a:a + BLOCK].astype(np.int64)
        index.add_sa_codes(codes_of(chunk, nlist), chunk)
    faiss.write_index(index, str(path))
    return path


def setup(folder: Path, n: int, nlist: int, shards: int, redone: int) -> dict:
    """Live's version and this build's shard parts, both ways, in `folder`."""
    import faiss

    from pipeline.index.assemble import KeptRuns, merge_ivf
    from pipeline.index.faiss_ops import to_bytes

    rng = np.random.default_rng(0)
    index = faiss.index_factory(DIMS, f"IVF{nlist},PQ{CODE}", faiss.METRIC_INNER_PRODUCT)
    index.quantizer.add(rng.standard_normal((nlist, DIMS)).astype(np.float32))  # random centroids and codebooks:
    faiss.copy_array_to_vector(rng.standard_normal(DIMS * 256).astype(np.float32), index.pq.centroids)
    index.is_trained = True  # a merge reads neither, nor any vector
    empty = to_bytes(index)
    (folder / "empty.faiss").write_bytes(empty)
    (folder / "live").mkdir()
    whole = part_file(empty, folder / "whole.faiss", np.arange(n), nlist)
    merge_ivf(empty, False, [whole], folder / "live" / "live.faiss", folder / "live" / "live.ivfdata")
    whole.unlink()
    bounds = np.linspace(0, n, shards + 1).astype(np.int64)
    redo = np.sort(rng.choice(n, redone, replace=False))
    kept = np.setdiff1d(np.arange(n), redo)
    for way, rows in (("kept", redo), ("full", np.arange(n))):
        (folder / way).mkdir()
        for s in range(shards):
            part_file(empty, folder / way / f"part-{s:05d}.faiss", rows[(rows >= bounds[s]) & (rows < bounds[s + 1])],
                      nlist)
    runs = KeptRuns.of(kept, kept)
    np.save(folder / "kept-runs.npy", runs.to_array())
    return {"rows": n, "redone": redone, "runs": len(runs.length)}


def measure(folder: Path, way: str) -> dict:
    """One merge in this process: its seconds and its peak anonymous memory above what it started with."""
    from pipeline.index.assemble import KeptLists, KeptRuns, merge_ivf

    def anon_mib() -> float:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("RssAnon")) / 1024

    empty = (folder / "empty.faiss").read_bytes()
    parts = sorted((folder / way).glob("part-*.faiss"))
    out = folder / f"out-{way}"
    out.mkdir()
    base, peak, done = anon_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], anon_mib() - base)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    kept = KeptLists(folder / "live" / "live.faiss", KeptRuns.stacked(np.load(folder / "kept-runs.npy"))) \
        if way == "kept" else None
    merge_ivf(empty, False, parts, out / "merged.faiss", out / "merged.ivfdata", kept)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    digest = hashlib.sha256()
    for f in ("merged.faiss", "merged.ivfdata"):
        digest.update((out / f).read_bytes())
    shutil.rmtree(out)
    return {"seconds": round(seconds, 3), "anon_peak_mib": round(peak[0], 1), "sha256": digest.hexdigest()}


def main() -> int:
    if sys.argv[1:2] == ["--measure"]:  # the child process: one merge
        print(json.dumps(measure(Path(sys.argv[2]), sys.argv[3])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--lists", type=int, default=4096)
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--redone", type=float, default=0.001, help="share of the rows redone")
    args = parse_args(parser)
    if args.smoke:
        vars(args).update(SMOKE)

    sizes = []
    for n in (args.rows, args.scale * args.rows):
        folder = args.out / "kept_merge"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        size = setup(folder, n, args.lists, args.shards, max(1, round(args.redone * n)))
        for way in ("kept", "full"):
            proc = subprocess.run([sys.executable, __file__, "--measure", str(folder), way], capture_output=True,
                                  text=True, check=True)
            size[way] = json.loads(proc.stdout.splitlines()[-1])
            print(f"{n:,} rows, {way}: {size[way]['seconds']} s, anon peak {size[way]['anon_peak_mib']} MiB",
                  flush=True)
        size["same_files"] = size["kept"].pop("sha256") == size["full"].pop("sha256")
        sizes.append(size)
        shutil.rmtree(folder)
    small, large = sizes
    growth = large["kept"]["anon_peak_mib"] - small["kept"]["anon_peak_mib"]
    lists_mib = (large["rows"] - small["rows"]) * (CODE + 8) / 2**20
    same = all(s["same_files"] for s in sizes)
    report = {"lists": args.lists, "shards": args.shards, "sizes": sizes, "kept_peak_growth_mib": round(growth, 1),
              "added_rows_lists_mib": round(lists_mib, 1), "same_files": same,
              "met": same and growth < lists_mib / 4}
    md = (f"# An incremental build's IVF merge: live's kept lists with the redone rows' parts\n\n"
          f"IVF{args.lists},PQ{CODE} (48-byte codes), {args.shards} shards.\n\n"
          "| rows | redone | runs of kept rows | kept merge s | full merge s | kept / full | kept peak MiB | "
          "full peak MiB | same files |\n|---|---|---|---|---|---|---|---|---|\n" +
          "".join(f"| {s['rows']:,} | {s['redone']:,} | {s['runs']:,} | {s['kept']['seconds']} | "
                  f"{s['full']['seconds']} | {s['kept']['seconds'] / max(s['full']['seconds'], 1e-9):.2f} | "
                  f"{s['kept']['anon_peak_mib']} | {s['full']['anon_peak_mib']} | {s['same_files']} |\n"
                  for s in sizes) +
          f"\n**The kept merge's peak anonymous memory grew by {growth:.1f} MiB from {small['rows']:,} to "
          f"{large['rows']:,} rows**; holding the added rows' lists would take {lists_mib:.0f} MiB (target: under a "
          f"quarter of it). Met: **{report['met']}**.\n")
    write_report(args, "kept_merge", report, md)
    return 0 if same and (args.smoke or report["met"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
