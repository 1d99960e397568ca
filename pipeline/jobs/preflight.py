"""The checks a build makes before any engine starts: everything it will read can be found, its quality gate can
pass, and its storage root can be written. The CLI and each flow call `check_inputs` first."""

from __future__ import annotations

from pipeline.config import PipelineConfig
from pipeline.corpus.readers import golden_set_urls, list_corpus, require_exists
from pipeline.errors import ConfigError
from pipeline.index.analyzer import Analyzer
from pipeline.index.variants import VariantSpec
from pipeline.models.encoder import tokenizer_for
from pipeline.quality.drift import vectors_source
from pipeline.quality.search import evaluated_modes
from pipeline.storage.backend import Storage


def check_inputs(cfg: PipelineConfig, storage: Storage) -> None:
    """Fail fast, before any engine starts, on a corpus, golden set, model or bm25 stemmer that cannot be found, a
    quality gate that could never pass, or a storage root that cannot be reached or written (checked last: the
    probe writes there)."""
    list_corpus(cfg.corpus)  # the corpus is there (its files are read by prepare)
    golden = golden_set_urls(cfg.corpus, cfg.evaluation.queries, cfg.evaluation.qrels)
    for url, name in zip(golden or (), ("evaluation.queries", "evaluation.qrels"), strict=False):
        require_exists(url, name)
    if cfg.publish.alias:
        check_gate_can_judge(cfg, golden is not None)
    tokenizer_for(cfg.model)
    if cfg.index.lexical:
        Analyzer.of(cfg.index.bm25)  # a stemmer language PyStemmer lacks fails here, not after embedding
    storage.probe()


def check_gate_can_judge(cfg: PipelineConfig, has_golden_set: bool) -> None:
    """The alias moves only through the gate, which reads its metric for its search mode from the build's
    evaluation: without a golden set, or for a mode the build does not evaluate, every run would be refused."""
    gate, alias = cfg.publish.gate, cfg.publish.alias
    if not has_golden_set:
        raise ConfigError(f"publish.alias {alias!r} moves only through the quality gate, which measures "
                          f"{gate.metric} on a golden set, and this config has none: set evaluation.queries and "
                          "evaluation.qrels (BEIR queries.jsonl and qrels TSV), or publish.alias to null to publish "
                          "versions without promoting them (`embedpipe promote --force` moves an alias past the gate)")
    specs = [VariantSpec.parse(v) for v in cfg.index.vector_variants]
    modes = evaluated_modes(specs, cfg.index.store_fp16, cfg.index.lexical)
    if gate.mode not in modes:
        raise ConfigError(f"publish.gate.mode {gate.mode!r} is not a search mode a build of index.variants "
                          f"{list(cfg.index.variants)} evaluates: expected one of {modes}")
    if gate.max_drift:  # the build records its drift statistics for monitor.mode, from vectors it can read back
        if cfg.monitor.mode not in modes:
            raise ConfigError(f"publish.gate.max_drift compares the drift statistics a build records for "
                              f"monitor.mode {cfg.monitor.mode!r}, which a build of index.variants "
                              f"{list(cfg.index.variants)} does not evaluate: expected one of {modes}")
        if vectors_source(cfg.index.store_fp16, [s.name for s in specs]) is None:
            raise ConfigError("publish.gate.max_drift compares statistics of the version's vectors, which a build "
                              f"of index.variants {list(cfg.index.variants)} without index.store_fp16 cannot read "
                              "back: keep the fp16 store or add an exact, fp16 or int8 variant")
