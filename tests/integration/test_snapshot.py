import json
import threading

import numpy as np
import polars as pl
import pytest

from pipeline.errors import ObjectMissing, PreconditionFailed, SnapshotError, StorageError
from pipeline.index.faiss_ops import build_exact, to_bytes
from pipeline.redaction import redact
from pipeline.snapshots.publishing import new_version, publish
from pipeline.snapshots.snapshot import MANIFEST, Snapshot, sha256
from pipeline.storage.backend import Storage


def files() -> dict[str, bytes]:
    x = np.eye(4, dtype=np.float32)
    ids = pl.DataFrame({"row": [0, 1, 2, 3], "doc_id": list("abcd")})
    import io

    buf = io.BytesIO()
    ids.write_parquet(buf)
    return {"index/exact.faiss": to_bytes(build_exact(x)), "ids.parquet": buf.getvalue()}


def manifest() -> dict:
    return {"index": {"variants": {"exact": {"kind": "exact", "file": "index/exact.faiss"}}},
            "counts": {"max_chunks_per_doc": 1}}


def test_publish_writes_checksums_and_manifest_last(tmp_path):
    storage = Storage(str(tmp_path))
    url = publish(storage, "idx", "v1", files(), manifest())
    snap = Snapshot.open(url)
    assert snap.version == "v1" and snap.verify() == {"ids.parquet": "ok", "index/exact.faiss": "ok"}
    for name, data in files().items():
        assert snap.manifest["files"][name] == {"sha256": sha256(data), "bytes": len(data)}
    assert snap.index("exact").ntotal == 4 and snap.ids["doc_id"].to_list() == list("abcd")


def test_corrupted_or_missing_file_is_refused_naming_it(storage_root):
    storage = Storage(storage_root)
    url = publish(storage, "idx", "v1", files(), manifest())
    key = "snapshots/idx/v1/index/exact.faiss"
    storage.write_bytes(key, storage.read_bytes(key)[:-1] + b"\x00")
    with pytest.raises(SnapshotError, match=r"index/exact\.faiss fails its checksum"):
        Snapshot.open(url).index("exact")
    with pytest.raises(SnapshotError, match=r"index/exact\.faiss fails its checksum"):
        Snapshot.open(url).verify()
    storage.delete("snapshots/idx/v1/ids.parquet")
    with pytest.raises(SnapshotError, match=r"ids\.parquet is missing"):
        Snapshot.open(url).verify()


def test_versions_are_immutable(tmp_path):
    storage = Storage(str(tmp_path))
    publish(storage, "idx", "v1", files(), manifest())
    before = (tmp_path / "snapshots/idx/v1" / MANIFEST).read_bytes()
    with pytest.raises(SnapshotError, match="already exists"):
        publish(storage, "idx", "v1", files(), manifest())
    assert (tmp_path / "snapshots/idx/v1" / MANIFEST).read_bytes() == before


def test_uncommitted_version_is_invisible_and_index_folder_opens_newest(tmp_path):
    storage = Storage(str(tmp_path))
    publish(storage, "idx", "20260101T000000000000Z-aaaaaa", files(), manifest())
    publish(storage, "idx", "20260102T000000000000Z-aaaaaa", files(), manifest())
    storage.write_bytes("snapshots/idx/20260103T000000000000Z-aaaaaa/ids.parquet", b"half-written upload")
    assert Snapshot.open(str(tmp_path / "snapshots/idx")).version == "20260102T000000000000Z-aaaaaa"
    with pytest.raises(SnapshotError, match="no committed snapshot"):
        Snapshot.open(str(tmp_path / "snapshots/idx/20260103T000000000000Z-aaaaaa"))
    with pytest.raises(SnapshotError, match="no committed snapshot"):
        Snapshot.open(str(tmp_path / "snapshots/other"))


def test_put_if_absent_has_exactly_one_winner(tmp_path):
    storage, outcomes = Storage(str(tmp_path)), []
    barrier = threading.Barrier(8)

    def writer(i: int) -> None:
        barrier.wait()
        try:
            storage.put_if_absent("commit.json", json.dumps({"writer": i}).encode())
            outcomes.append(("won", i))
        except PreconditionFailed:
            outcomes.append(("lost", i))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for kind, i in outcomes if kind == "won"]
    assert len(winners) == 1 and len(outcomes) == 8
    assert json.loads(storage.read_bytes("commit.json")) == {"writer": winners[0]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["commit.json"]  # no temp files left behind


def test_version_ids_sort_by_time_and_are_unique():
    versions = [new_version() for _ in range(100)]
    assert len(set(versions)) == 100 and versions == sorted(versions)


def test_storage_errors_name_the_object_but_never_credentials(tmp_path):
    with pytest.raises(StorageError, match=r"not found: .*missing\.json"):
        Storage(str(tmp_path)).read_bytes("missing.json")
    assert redact("s3://AKIAXXXX:topsecret@bucket/prefix") == "s3://***@bucket/prefix"
    # signed URLs and SAS tokens: the parts that grant access go, the rest (a version id, an expiry) stays
    assert redact("https://b.s3.amazonaws.com/c.jsonl?X-Amz-Credential=AKIA%2Fx&X-Amz-Signature=beef&versionId=3") \
        == "https://b.s3.amazonaws.com/c.jsonl?X-Amz-Credential=***&X-Amz-Signature=***&versionId=3"
    assert redact("https://a.blob.core.windows.net/c/x.jsonl?sv=2022&se=2026&sig=ab%2Bc&sp=r") \
        == "https://a.blob.core.windows.net/c/x.jsonl?sv=2022&se=2026&sig=***&sp=r"


def test_manifest_never_holds_credentials_from_urls():
    from pipeline.config_loader import parse_config
    from pipeline.snapshots.manifest import build_manifest

    cfg = parse_config({"index_name": "x", "corpus": {"source": "s3://AKIA123:sekrit@bucket/corpus.jsonl"},
                        "storage": {"root": "s3://AKIA123:sekrit@bucket/root"}})
    body = json.dumps(build_manifest(cfg, run_id="r", model={}, chunking={}, index={}, counts={}, corpus={},
                                     evaluation={}, timings={}))
    assert "sekrit" not in body and "AKIA123" not in body and "s3://***@bucket/root" in body


def test_a_snapshot_opens_with_the_storage_options_of_its_config(s3_server, monkeypatch):
    """An endpoint given only in `storage.options` (no AWS_ENDPOINT_URL) reaches every read of the snapshot."""
    import uuid

    from tests.conftest import S3_BUCKET

    url = publish(Storage(f"s3://{S3_BUCKET}/{uuid.uuid4().hex}"), "idx", "v1", files(), manifest())
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    snap = Snapshot.open(url, endpoint_url=s3_server)
    assert snap.storage.options == {"endpoint_url": s3_server}
    assert snap.verify() == {"ids.parquet": "ok", "index/exact.faiss": "ok"} and snap.index("exact").ntotal == 4


def test_a_failed_download_leaves_no_partial_file_and_names_a_full_cache_disk(s3_server, tmp_path, monkeypatch):
    """A copy into the snapshot cache that fails half-way (a full disk, a dropped connection) leaves nothing there,
    so retries do not pile up partial files; a full cache disk or a timeout is a storage error (a service tries the
    version again), only an object not there is the version's own fault (refused until the alias moves)."""
    import errno
    import uuid

    from tests.conftest import S3_BUCKET

    url = publish(Storage(f"s3://{S3_BUCKET}/{uuid.uuid4().hex}"), "idx", "v1", files(), manifest())
    monkeypatch.setenv("EMBEDPIPE_SNAPSHOT_CACHE", str(tmp_path / "cache"))
    real = Storage.get_file

    def failing(error: Exception):
        def get_file(self, key, local):
            with open(local, "wb") as fh:
                fh.write(b"half of it")
            raise error
        return get_file

    for error, raised, says in [
            (OSError(errno.ENOSPC, "No space left on device"), StorageError,
             r"ids\.parquet cannot be copied into the snapshot cache .*cache \(No space left on device\)"),
            (StorageError("storage error on s3://bucket/x: ReadTimeoutError"), StorageError,  # not the version's fault
             r"^storage error on s3://bucket/x: ReadTimeoutError$"),
            (ObjectMissing("not found: s3://bucket/x"), SnapshotError, r"ids\.parquet is missing \(not found")]:
        monkeypatch.setattr(Storage, "get_file", failing(error))
        with pytest.raises(raised, match=says):
            _ = Snapshot.open(url).ids
        assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []
    monkeypatch.setattr(Storage, "get_file", real)
    assert Snapshot.open(url).ids["doc_id"].to_list() == list("abcd")
    assert [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()] == ["ids.parquet"]
