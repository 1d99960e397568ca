"""One storage suite, run against the filesystem and a real S3 server (moto, loopback)."""

import json
import subprocess
import sys
import threading

import pytest

from pipeline.errors import PreconditionFailed, StorageError
from pipeline.storage.backend import Storage
from tests.conftest import write_elsewhere


def race(n: int, fn) -> list:
    """Run fn(i) in n threads released together; returns each outcome ("won", i) or ("lost", i)."""
    barrier, outcomes = threading.Barrier(n), []

    def run(i: int) -> None:
        barrier.wait()
        try:
            fn(i)
            outcomes.append(("won", i))
        except PreconditionFailed:
            outcomes.append(("lost", i))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_write_read_list_delete(storage_root):
    s = Storage(storage_root)
    s.write_bytes("a/b.txt", b"one")
    s.write_bytes("a/b.txt", b"two")  # plain writes replace
    s.write_bytes("a/c/d.txt", b"x")
    assert s.read_bytes("a/b.txt") == b"two" and s.exists("a/c/d.txt") and not s.exists("a/zz")
    assert s.list("a") == ["b.txt", "c"] and s.list("missing") == []
    s.delete("a/c", recursive=True)
    assert s.list("a") == ["b.txt"]
    with pytest.raises(StorageError, match=r"not found: .*a/zz"):
        s.read_bytes("a/zz")


def test_a_copy_is_whole_and_outlives_its_source(storage_root):
    s = Storage(storage_root)
    s.write_bytes("cache/a.parquet", b"vectors")
    s.copy("cache/a.parquet", "runs/r/a.parquet")
    s.copy("cache/a.parquet", "runs/r/a.parquet")  # again, as a rerun does: replaced, not refused
    s.delete("cache/a.parquet")
    assert s.read_bytes("runs/r/a.parquet") == b"vectors" and s.list("runs/r") == ["a.parquet"]
    with pytest.raises(StorageError, match=r"not found: .*cache/gone"):
        s.copy("cache/gone", "runs/r/b.parquet")


@pytest.mark.parametrize("size", [1000, 51 << 20], ids=["one-put", "multipart"])
def test_a_write_whose_block_fails_leaves_no_object_and_its_error_as_it_was(storage_root, size):
    """A writer's own error inside open_write's block: nothing appears under the key (on S3 an upload over the
    client's 50 MiB block is multipart: it is aborted, not completed with what was written), and the error is the
    writer's, not a storage error."""
    s = Storage(storage_root)
    s.write_bytes("index/exact.faiss", b"the version before")
    for key in ("index/exact.faiss", "index/new.faiss"):
        with pytest.raises(TypeError, match="the writer's own bug"), s.open_write(key) as out:
            out.write(b"x" * size)
            raise TypeError("the writer's own bug")
    assert s.read_bytes("index/exact.faiss") == b"the version before" and s.list("index") == ["exact.faiss"]
    if not s.is_local:
        bucket = storage_root.removeprefix("s3://").split("/")[0]
        assert not s.fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads")
    with s.open_write("index/new.faiss") as out:  # and a block that ends well commits
        out.write(b"y" * size)
    assert s.read_bytes("index/new.faiss") == b"y" * size and out.size == size


def test_put_if_absent_has_exactly_one_winner_among_8(storage_root):
    s = Storage(storage_root)
    outcomes = race(8, lambda i: s.put_if_absent("commit.json", json.dumps({"writer": i}).encode()))
    winners = [i for kind, i in outcomes if kind == "won"]
    assert len(winners) == 1 and len(outcomes) == 8
    assert json.loads(s.read_bytes("commit.json")) == {"writer": winners[0]}
    with pytest.raises(PreconditionFailed, match="commit.json"):
        s.put_if_absent("commit.json", b"again")


def test_compare_and_swap_refuses_stale_tags(storage_root):
    s = Storage(storage_root)
    assert s.read_versioned("alias.json") is None
    t1 = s.compare_and_swap("alias.json", b"v1", None)
    with pytest.raises(PreconditionFailed):
        s.compare_and_swap("alias.json", b"v1-again", None)  # "create" when it exists
    t2 = s.compare_and_swap("alias.json", b"v2", t1)
    with pytest.raises(PreconditionFailed):
        s.compare_and_swap("alias.json", b"stale", t1)
    assert s.read_versioned("alias.json") == (b"v2", t2)


def test_compare_and_swap_has_exactly_one_winner_among_8(storage_root):
    s = Storage(storage_root)
    seen = s.compare_and_swap("alias.json", b"start", None)
    outcomes = race(8, lambda i: s.compare_and_swap("alias.json", f"writer {i}".encode(), seen))
    winners = [i for kind, i in outcomes if kind == "won"]
    assert len(winners) == 1 and len(outcomes) == 8  # the other 7 lost with PreconditionFailed, none with an error
    assert s.read_versioned("alias.json")[0] == f"writer {winners[0]}".encode()


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", "a/../../b", "a//b", "a/./b", "a\\b", "a\x00b"])
def test_keys_cannot_escape_the_root(storage_root, key):
    with pytest.raises(StorageError, match="refusing object key"):
        Storage(storage_root).write_bytes(key, b"x")


def test_a_local_root_that_cannot_be_written_says_why_in_local_terms(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(StorageError, match=r"storage error on .*a-file/store/.*: Not a directory$"):
        Storage(str(tmp_path / "a-file" / "store")).probe()
    with pytest.raises(StorageError, match=r"^storage root /proc/store: cannot write there: no folder can be "
                                           r"created there$"):
        Storage("/proc/store").probe()


@pytest.mark.parametrize(("options", "says"), [
    ({"bogus_option": 1}, r"\(TypeError: .*unexpected keyword argument 'bogus_option'\)"),
    ({"client_kwargs": "not-a-mapping"}, r"\(AttributeError\)"),
])
def test_storage_options_the_backend_cannot_take_are_named_as_such(s3_server, options, says):
    from tests.conftest import S3_BUCKET, S3_SECRET

    with pytest.raises(StorageError, match=rf"^storage root s3://{S3_BUCKET}/opts: the backend does not take these "
                                           rf"storage\.options {says}") as caught:
        Storage(f"s3://{S3_BUCKET}/opts", **options).probe()
    assert S3_SECRET not in str(caught.value)


def test_commits_use_the_same_storage_options_as_every_other_write(s3_server):
    """Manifests and aliases are written by conditional puts, which s3fs cannot make: they go through a client of
    their own, made from the same options (a session token, the client's config, encryption a bucket policy
    requires), so they are written as the version's other files are."""
    import uuid

    import boto3

    from tests.conftest import S3_BUCKET, S3_KEY, S3_SECRET

    prefix = uuid.uuid4().hex
    s = Storage(f"s3://{S3_BUCKET}/{prefix}", key=S3_KEY, secret=S3_SECRET, token="a-session-token",
                config_kwargs={"connect_timeout": 7}, s3_additional_kwargs={"ServerSideEncryption": "AES256"})
    s.write_bytes("snapshots/idx/v1/ids.parquet", b"ids")
    s.put_if_absent("snapshots/idx/v1/manifest.json", b"{}")
    tag = s.compare_and_swap("aliases/idx/live.json", b'{"version": "v1"}', None)
    s.compare_and_swap("aliases/idx/live.json", b'{"version": "v2"}', tag)
    client = boto3.client("s3")
    for key in ("snapshots/idx/v1/ids.parquet", "snapshots/idx/v1/manifest.json", "aliases/idx/live.json"):
        assert client.head_object(Bucket=S3_BUCKET, Key=f"{prefix}/{key}")["ServerSideEncryption"] == "AES256", key
    assert s.read_versioned("aliases/idx/live.json")[0] == b'{"version": "v2"}'
    assert s._s3.meta.config.connect_timeout == 7 and s._s3._request_signer._credentials.token == "a-session-token"


def test_a_listing_never_answers_for_what_another_process_wrote_since(storage_root):
    """A worker commits a shard (its marker) after the driver listed the shard's folder: the driver's next look must
    see the marker, and not a file another process deleted meanwhile (s3fs kept listings to answer `exists`)."""
    s = Storage(storage_root)
    s.write_bytes("runs/r/shards/0/part-0.parquet", b"x")
    assert s.list("runs/r/shards/0") == ["part-0.parquet"]

    write_elsewhere(f"{storage_root}/runs/r/shards/0/_SUCCESS", b"{}")
    write_elsewhere(f"{storage_root}/runs/r/shards/0/part-0.parquet", None)
    assert s.exists("runs/r/shards/0/_SUCCESS")
    assert not s.exists("runs/r/shards/0/part-0.parquet")
    assert s.list("runs/r/shards/0") == ["_SUCCESS"]


def test_a_local_write_killed_before_its_rename_is_not_listed(tmp_path):
    """A worker killed mid-shard (its driver gone) can die after its temp file is complete but before the rename:
    the temp file stays. Listing it made the resumed shard read that part twice (its rows doubled)."""
    key = "runs/r/shards/2/vectors/000000-00000.parquet"
    kill_at_rename = ("import os, sys; from pipeline.storage.backend import Storage; "
                      "os.replace = lambda *a: os._exit(9); Storage(sys.argv[1]).write_bytes(sys.argv[2], b'rows')")
    assert subprocess.run([sys.executable, "-c", kill_at_rename, str(tmp_path), key]).returncode == 9
    left = [p.name for p in (tmp_path / "runs/r/shards/2/vectors").iterdir()]
    assert len(left) == 1 and left[0].startswith("000000-00000.parquet.tmp-")  # what the killed writer left

    s = Storage(str(tmp_path))
    assert s.list("runs/r/shards/2/vectors") == [] and not s.exists(key)
    s.write_bytes(key, b"rows")  # the resumed attempt
    assert s.list("runs/r/shards/2/vectors") == ["000000-00000.parquet"]


def test_last_modified_is_the_newest_write_under_a_prefix(storage_root):
    """What gc-runs ages an abandoned run's folder by, on either backend."""
    from datetime import UTC, datetime, timedelta

    s = Storage(storage_root)
    assert s.last_modified("runs/none") is None
    s.write_bytes("runs/r/shards/00000/_PREPARED", b"{}")
    s.write_bytes("runs/r/plan.json", b"{}")
    when = s.last_modified("runs/r")
    assert when is not None and abs(datetime.now(UTC) - when) < timedelta(minutes=1)
