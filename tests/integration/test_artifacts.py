"""PNG artifacts: what a flow attaches is what the server hands to the UI (an inline data URI, or a link)."""

from __future__ import annotations

import base64
import io
import re

import pytest


def _png(width: int, height: int) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)  # noise: no compression
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def artifacts_of(prefect_api: str, flow_fn) -> dict:
    """Run a flow returning its flow run's id against the test server; the artifacts it made, by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_api}):
        run_id = flow_fn()
        with get_client(sync_client=True) as client:
            return {a.key: a for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))}


def test_png_artifact_inlines_small_pngs_and_links_large_ones(prefect_api):
    from prefect import flow

    from flows.artifacts import MAX_INLINE_BYTES, png_artifact

    small, large = _png(64, 48), _png(300, 300)
    assert len(small) < MAX_INLINE_BYTES < len(large)

    @flow(name="png-artifacts")
    def attach() -> str:
        from prefect.runtime import flow_run

        png_artifact(small, key="small-plot", description="a [small] plot")
        png_artifact(large, key="large-plot", description="a large plot", link="s3://bucket/plots/large.png")
        with pytest.raises(ValueError, match="over 200000"):
            png_artifact(large, key="large-plot")
        with pytest.raises(ValueError, match="not a PNG"):
            png_artifact(b"GIF89a...", key="not-png")
        return flow_run.id

    artifacts = artifacts_of(prefect_api, attach)
    assert set(artifacts) == {"small-plot", "large-plot"}
    inline = artifacts["small-plot"]
    assert inline.type == "markdown" and inline.description == "a [small] plot"
    match = re.fullmatch(r"!\[a \(small\) plot\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", inline.data)
    assert match and base64.b64decode(match.group(1)) == small  # the exact bytes, ready for <img src>
    link = artifacts["large-plot"]
    assert link.type == "markdown" and "s3://bucket/plots/large.png" in link.data and "base64" not in link.data


def test_quality_plot_of_many_modes_stays_small_enough_to_inline():
    from PIL import Image

    from flows.artifacts import MAX_INLINE_BYTES
    from pipeline.reports.plots import quality_vs_bytes_png

    kinds = {"exact": 1536, "fp16": 768, "ivfpq": 48, "int8": 384, "int8-ivf": 384, "binary": 48, "binary-ivf": 48}
    variants = {name: {"kind": name, "bytes_per_vector": size,
                       "quality": {name + suffix: {"ndcg@10": 0.4 + i / 40 + j / 100}
                                   for j, suffix in enumerate(("", "+rescore"))}}
                for i, (name, size) in enumerate(kinds.items())}
    png = quality_vs_bytes_png({"variants": variants}, "14 modes")
    assert len(png) < MAX_INLINE_BYTES and Image.open(io.BytesIO(png)).size[0] >= 800  # readable, and inlined


def many_variants() -> dict:
    """Every kind at three Matryoshka widths, with bm25 and hybrid modes: a chart too large to inline."""
    sizes = {"exact": 1536, "fp16": 768, "int8": 384, "int8-ivf": 384, "ivfpq": 48, "binary": 48, "binary-ivf": 48}
    variants = {}
    for i, (kind, size) in enumerate(sizes.items()):
        for j, dims in enumerate(("", "@64", "@128")):
            name = kind + dims
            modes = [name, *([f"{name}+rescore"] if kind != "exact" else [])]
            modes += [f"hybrid:{m}" for m in modes] + ([f"{name}+hamming"] if kind.startswith("binary") else [])
            variants[name] = {"kind": kind, "bytes_per_vector": size // (j + 1),
                              "quality": {m: {"ndcg@10": 0.5 + (i * 7 + j * 3 + len(m)) % 37 / 100} for m in modes}}
    return variants | {"bm25": {"kind": "bm25", "bytes_per_vector": 896, "quality": {"bm25": {"ndcg@10": 0.6}}}}


def test_a_chart_too_large_to_inline_is_kept_in_the_run_folder_and_linked(prefect_api, tmp_path):
    """A build of many variants draws a chart over the inline limit: it is stored beside the run and the artifact
    links there. Before, the ValueError failed a run whose version was already published and promoted."""
    from prefect import flow

    from flows.artifacts import MAX_INLINE_BYTES
    from flows.build import publish_artifacts
    from pipeline.config_loader import parse_config
    from pipeline.jobs.build import BuildSummary
    from pipeline.reports.plots import quality_vs_bytes_png
    from pipeline.storage.backend import Storage

    index = {"metric": "inner_product", "variants": many_variants()}
    assert len(quality_vs_bytes_png(index, "x")) > MAX_INLINE_BYTES
    cfg = parse_config({"index_name": "many", "corpus": {"source": "c.jsonl"}, "storage": {"root": str(tmp_path)}})
    modes = {m: q for v in index["variants"].values() for m, q in v["quality"].items()}
    summary = BuildSummary("reindex", "many", "v1", str(tmp_path), "r1", "full build", {"read": 1}, {"modes": modes},
                           index, {}, None)

    @flow(name="many-variants")
    def attach() -> str:
        from prefect.runtime import flow_run

        publish_artifacts(cfg, Storage(str(tmp_path)), summary)
        return flow_run.id

    artifacts = artifacts_of(prefect_api, attach)
    kept = tmp_path / "runs" / "r1" / "quality_vs_bytes.png"
    assert kept.read_bytes().startswith(b"\x89PNG") and kept.stat().st_size > MAX_INLINE_BYTES
    assert str(kept) in artifacts["quality-many"].data and "base64" not in artifacts["quality-many"].data
    assert "reindex-many" in artifacts  # the summary beside it
