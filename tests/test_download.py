"""`pancreas download` against a tiny tar served from 127.0.0.1 (no network)."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest
from lockholder import lock_held_elsewhere

from dataset.common.locks import LOCK_NAME, holds_lock
from sources.config import DownloadConfig
from sources.download import DownloadError, download_dataset, download_file, extract_archive

NAME = "Task07_Pancreas.tar"
REPO = Path(__file__).resolve().parents[1]


def make_tar(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


GOOD = make_tar(
    {
        "Task07_Pancreas/dataset.json": b'{"name": "Pancreas"}',
        "Task07_Pancreas/imagesTr/pancreas_001.nii.gz": bytes(range(256)) * 300,
        "Task07_Pancreas/imagesTr/._pancreas_001.nii.gz": b"mac resource fork",
    }
)


class Server:
    """HTTP server with Range support that can fail or cut short its first responses."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.drop_after: int | None = None  # bytes sent before dropping (once)
        self.fail_first: list[int | None] = []  # per request: an HTTP error status, None: serve
        self.drops: list[int] = []  # per served response: bytes sent before closing the connection
        self.honour_range = True
        self.requests: list[str | None] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                data = owner.payload
                rng = self.headers.get("Range")
                owner.requests.append(rng)
                status = owner.fail_first.pop(0) if owner.fail_first else None
                if status is not None:
                    self.send_error(status)
                    return
                start = 0
                if rng and owner.honour_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if owner.drop_after is not None or owner.drops:
                    self.wfile.write(body[: owner.drops.pop(0) if owner.drops else owner.drop_after])
                    owner.drop_after = None
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{NAME}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def config_for(server: Server, payload: bytes, **kw) -> DownloadConfig:
    return DownloadConfig(url=server.url, md5=hashlib.md5(payload).hexdigest(), chunk_bytes=4096, timeout_s=5, **kw)


def test_download_verify_extract_skips_resource_forks(tmp_path: Path):
    with Server(GOOD) as server:
        summary = download_dataset(config_for(server, GOOD), tmp_path)
    root = tmp_path / "Task07_Pancreas"
    assert summary.dataset_dir == root
    assert (root / "imagesTr/pancreas_001.nii.gz").read_bytes() == bytes(range(256)) * 300
    assert not (root / "imagesTr/._pancreas_001.nii.gz").exists()
    assert (summary.extracted_members, summary.skipped_members) == (2, 1)
    assert (tmp_path / NAME).read_bytes() == GOOD
    assert not (tmp_path / (NAME + ".part")).exists()


def test_second_run_does_nothing(tmp_path: Path):
    with Server(GOOD) as server:
        download_dataset(config_for(server, GOOD), tmp_path)
        summary = download_dataset(config_for(server, GOOD), tmp_path)
        assert len(server.requests) == 1
    assert summary.downloaded_bytes == 0


def test_interrupted_transfer_resumes_from_part_file(tmp_path: Path):
    with Server(GOOD) as server:
        server.drop_after = 10000
        with pytest.raises(DownloadError, match="run again to resume"):
            download_dataset(config_for(server, GOOD, retries=0), tmp_path)
        part = tmp_path / (NAME + ".part")
        assert part.stat().st_size == 10000
        assert not (tmp_path / "Task07_Pancreas").exists()
        summary = download_dataset(config_for(server, GOOD, retries=0), tmp_path)
        assert server.requests == [None, "bytes=10000-"]
    assert summary.downloaded_bytes == len(GOOD) - 10000
    assert (tmp_path / NAME).read_bytes() == GOOD
    assert (tmp_path / "Task07_Pancreas/dataset.json").is_file()


def test_dropped_connection_is_retried_within_one_run(tmp_path: Path):
    with Server(GOOD) as server:
        server.drop_after = 5000
        download_file(server.url, tmp_path / NAME, hashlib.md5(GOOD).hexdigest(), config_for(server, GOOD, retries=2))
        assert server.requests == [None, "bytes=5000-"]
    assert (tmp_path / NAME).read_bytes() == GOOD


def test_server_ignoring_range_restarts_cleanly(tmp_path: Path):
    (tmp_path / (NAME + ".part")).write_bytes(GOOD[:3000])
    with Server(GOOD) as server:
        server.honour_range = False
        download_file(server.url, tmp_path / NAME, hashlib.md5(GOOD).hexdigest(), config_for(server, GOOD))
    assert (tmp_path / NAME).read_bytes() == GOOD


def test_checksum_mismatch_extracts_nothing(tmp_path: Path):
    corrupted = GOOD[:1000] + b"X" + GOOD[1001:]
    with Server(corrupted) as server:
        with pytest.raises(DownloadError, match="does not match"):
            download_dataset(config_for(server, GOOD), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME + ".md5-mismatch"]  # a refusal takes its lock file


@pytest.mark.parametrize(
    ("members", "links"),
    [
        ({"../evil": b"x"}, None),
        ({"Task07_Pancreas/../../evil": b"x"}, None),
        ({"/tmp/evil_absolute": b"x"}, None),
        ({"Task07_Pancreas/ok": b"x"}, {"Task07_Pancreas/link": "../../evil"}),
        ({"Task07_Pancreas/ok": b"x"}, {"Task07_Pancreas/link": "/etc/passwd"}),
    ],
)
def test_malicious_members_refused(tmp_path: Path, members, links):
    archive = tmp_path / "bad.tar"
    archive.write_bytes(make_tar(members, links))
    out = tmp_path / "out"
    with pytest.raises(DownloadError, match="refusing archive member"):
        extract_archive(archive, out)
    assert list(out.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_config_rejects_bad_md5():
    with pytest.raises(ValueError, match="md5"):
        DownloadConfig(md5="nothex")


def test_cli_download(tmp_path: Path, capsys):
    from pancreas.cli import main

    with Server(GOOD) as server:
        args = ["download", "--out", str(tmp_path), "--url", server.url, "--md5", hashlib.md5(GOOD).hexdigest()]
        assert main(args) == 0
        assert "2 files extracted" in capsys.readouterr().out
        assert main(args) == 0
        assert "already downloaded" in capsys.readouterr().out
        bad = ["download", "--out", str(tmp_path / "x"), "--url", server.url, "--md5", "0" * 32]
        assert main(bad) == 2
        assert "does not match" in capsys.readouterr().err


def test_deleted_dataset_is_extracted_again(tmp_path: Path):
    import shutil

    with Server(GOOD) as server:
        download_dataset(config_for(server, GOOD), tmp_path)
        shutil.rmtree(tmp_path / "Task07_Pancreas")
        summary = download_dataset(config_for(server, GOOD), tmp_path)
        assert len(server.requests) == 1  # the kept archive is re-verified, not fetched again
    assert not summary.already_done and (tmp_path / "Task07_Pancreas/dataset.json").is_file()


def test_interrupted_extraction_leaves_no_dataset_folder(tmp_path: Path, monkeypatch):
    archive = tmp_path / NAME
    archive.write_bytes(GOOD)
    out = tmp_path / "out"
    real_extract = tarfile.TarFile.extract
    calls = []

    def dies_on_second_member(self, member, *args, **kwargs):
        calls.append(member.name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C half-way
        return real_extract(self, member, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extract", dies_on_second_member)
    with pytest.raises(KeyboardInterrupt):
        extract_archive(archive, out)
    assert list(out.iterdir()) == []  # neither a partial Task07_Pancreas/ nor the staging folder
    # a SIGKILL leaves the staging folder behind: the next run clears it and completes
    (out / f".{NAME}.extracting" / "Task07_Pancreas").mkdir(parents=True)
    monkeypatch.setattr(tarfile.TarFile, "extract", real_extract)
    assert extract_archive(archive, out)[:2] == (2, 1)
    assert sorted(p.name for p in out.iterdir()) == ["Task07_Pancreas"]
    assert (out / "Task07_Pancreas/imagesTr/pancreas_001.nii.gz").read_bytes() == bytes(range(256)) * 300


def test_existing_dataset_folder_is_never_merged_into(tmp_path: Path):
    archive = tmp_path / NAME
    archive.write_bytes(GOOD)
    mine = tmp_path / "out" / "Task07_Pancreas"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(DownloadError, match=r"Task07_Pancreas already exists.*nothing was extracted"):
        extract_archive(archive, tmp_path / "out")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Task07_Pancreas"]


# ----------------------------------------------------------------------------- crafted archives
def crafted_tar(entries: list[tuple[str, str, object]]) -> bytes:
    """A tar of (name, kind, payload): kind file (bytes), dir, sym/hard (link name), fifo, chr."""
    types = {
        "dir": tarfile.DIRTYPE,
        "sym": tarfile.SYMTYPE,
        "hard": tarfile.LNKTYPE,
        "fifo": tarfile.FIFOTYPE,
        "chr": tarfile.CHRTYPE,
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.type, info.mode = types[kind], 0o755
            if kind in ("sym", "hard"):
                info.linkname = payload
            tar.addfile(info)
    return buf.getvalue()


T = "Task07_Pancreas"
# T/l -> "." makes T/l/l/l/l/l the folder T itself, so a link that is lexically inside
# (5 levels down, 3 up) points 3 levels above T: out/.staging/T -> 3 up is tmp_path.
PAD = "/".join([T] + ["l"] * 5)
CHAIN = [(T, "dir", None), (f"{T}/l", "sym", "."), (f"{PAD}/q", "sym", "../../../")]


def path_max_entries(levels: int = 17, width: int = 250) -> list:
    """CVE-2025-4517: folders of 250-character names reached through one-letter links,
    so the real path of the last link passes PATH_MAX and ``os.path.realpath`` (and with
    it the 'tar' and vulnerable 'data' filters) stops resolving links, while the kernel
    follows the short path out of the folder."""
    comp = "d" * width
    entries, x = list(CHAIN[:2]), PAD
    for _ in range(levels):
        entries += [(f"{x}/{comp}", "dir", None), (f"{x}/s", "sym", comp)]
        x = f"{x}/s"
    return [*entries, (f"{x}/p", "sym", "../" * (levels + 3)), (f"{x}/p/escaped.txt", "file", b"pwned")]


CRAFTED = {  # name -> (entries, first refused member, reason)
    "symlink chain": ([*CHAIN, (f"{T}/ok.txt", "file", b"x")], f"{T}/l", "symbolic link"),
    "symlink chain then file": ([*CHAIN, (f"{PAD}/q/escaped.txt", "file", b"pwned")], f"{T}/l", "symbolic link"),
    "symlink chain then hardlink": (
        [*CHAIN, (f"{T}/h", "hard", f"{PAD}/q/victim.txt"), (f"{T}/h", "file", b"pwned")],
        f"{T}/l",
        "symbolic link",
    ),
    "PATH_MAX (CVE-2025-4517)": (path_max_entries(), f"{T}/l", "symbolic link"),
    "hardlink": ([(f"{T}/a.txt", "file", b"x"), (f"{T}/b.txt", "hard", f"{T}/a.txt")], f"{T}/b.txt", "hard link"),
    "absolute": (
        [(f"{T}/a.txt", "file", b"x"), ("/tmp/evil_absolute", "file", b"x")],
        "/tmp/evil_absolute",
        "absolute path",
    ),
    "dotdot": (
        [(f"{T}/a.txt", "file", b"x"), (f"{T}/../../escaped.txt", "file", b"x")],
        f"{T}/../../escaped.txt",
        "'..'",
    ),
    "fifo": ([(f"{T}/a.txt", "file", b"x"), (f"{T}/pipe", "fifo", None)], f"{T}/pipe", "FIFO"),
    "device": ([(f"{T}/a.txt", "file", b"x"), (f"{T}/null", "chr", None)], f"{T}/null", "device"),
}


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_crafted_archive_is_refused_in_one_line_before_anything_is_written(tmp_path: Path, capsys, kind):
    from pancreas.cli import main

    entries, member, reason = CRAFTED[kind]
    payload = crafted_tar(entries)
    (tmp_path / "victim.txt").write_text("original")
    out = tmp_path / "out"
    with Server(payload) as server:
        code = main(["download", "--out", str(out), "--url", server.url, "--md5", hashlib.md5(payload).hexdigest()])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("pancreas download: error:")]
    assert code == 2 and "Traceback" not in err
    assert len(errors) == 1, err
    assert str(out / NAME) in errors[0] and repr(member) in errors[0] and reason in errors[0], errors[0]
    assert "nothing was extracted" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "victim.txt"]
    assert (tmp_path / "victim.txt").read_text(encoding="utf-8") == "original"
    assert sorted(p.name for p in out.iterdir()) == [NAME]  # no staging, no dataset, no lock file


def test_data_filter_is_a_second_wall(tmp_path: Path, monkeypatch):
    """Were the member scan ever to let a link through, the 'data' filter still stops it."""
    import sources.archive as archive_module

    monkeypatch.setattr(archive_module, "_member_problem", lambda *args: None)
    archive = tmp_path / NAME
    archive.write_bytes(crafted_tar(CHAIN))
    with pytest.raises(DownloadError, match=r"refusing archive member .*Task07_Pancreas/l/l/l/l/l/q") as info:
        extract_archive(archive, tmp_path / "out")
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


# ----------------------------------------------------------------------------- retries
def test_http_5xx_is_retried_with_exponential_backoff(tmp_path: Path, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr("sources.download.time.sleep", waits.append)
    with Server(GOOD) as server:
        server.fail_first = [503, 500, 502]
        download_dataset(config_for(server, GOOD, retries=3, retry_wait_s=0.5), tmp_path)
        assert server.requests == [None] * 4
    assert waits == [0.5, 1.0, 2.0]
    assert (tmp_path / NAME).read_bytes() == GOOD


def test_dropped_connections_resume_and_progress_resets_the_count(tmp_path: Path, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr("sources.download.time.sleep", waits.append)
    with Server(GOOD) as server:
        server.drops = [5000, 5000, 5000]
        download_dataset(config_for(server, GOOD, retries=1, retry_wait_s=0.25), tmp_path)
        assert server.requests == [None, "bytes=5000-", "bytes=10000-", "bytes=15000-"]
    assert waits == [0.25, 0.25, 0.25]  # each try brought bytes, so none counts against `retries`
    assert (tmp_path / NAME).read_bytes() == GOOD
    assert (tmp_path / "Task07_Pancreas/dataset.json").is_file()


def test_retries_run_out_with_one_line_and_the_part_file_kept(tmp_path: Path, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr("sources.download.time.sleep", waits.append)
    with Server(GOOD) as server:
        server.drops = [4096]
        server.fail_first = [None, 503, 503]  # None: serve (and drop, above)
        gave_up = r"gave up after 3 failed tries in a row .last: HTTP 503.*run again to resume"
        with pytest.raises(DownloadError, match=gave_up) as info:
            download_dataset(config_for(server, GOOD, retries=2, retry_wait_s=1.0), tmp_path)
        assert "\n" not in str(info.value)
        assert waits == [1.0, 2.0]  # the first try brought bytes, so it starts the count
        assert (tmp_path / (NAME + ".part")).read_bytes() == GOOD[:4096]
        summary = download_dataset(config_for(server, GOOD, retries=0), tmp_path)  # later run resumes
        assert server.requests[-1] == "bytes=4096-"
    assert summary.downloaded_bytes == len(GOOD) - 4096


def test_client_errors_are_not_retried(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("sources.download.time.sleep", lambda s: None)
    with Server(GOOD) as server:
        server.fail_first = [404]
        with pytest.raises(DownloadError, match="HTTP 404"):
            download_dataset(config_for(server, GOOD), tmp_path)
        assert len(server.requests) == 1


# ----------------------------------------------------------------------------- md5 mismatch
def test_checksum_mismatch_keeps_the_download_and_says_how_to_retry(tmp_path: Path, capsys):
    from pancreas.cli import main

    corrupted = GOOD[:1000] + b"X" + GOOD[1001:]
    bad = tmp_path / (NAME + ".md5-mismatch")
    args = ["download", "--out", str(tmp_path), "--md5", hashlib.md5(GOOD).hexdigest()]
    with Server(corrupted) as server:
        assert main([*args, "--url", server.url]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pancreas download: error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and "rerun" in errors[0] and "mirror" in errors[0], errors
    assert bad.read_bytes() == corrupted
    assert sorted(p.name for p in tmp_path.iterdir()) == [bad.name]
    with Server(GOOD) as server:  # a rerun downloads from scratch, not from the bad bytes
        assert main([*args, "--url", server.url]) == 0
        assert server.requests == [None]
    assert (tmp_path / NAME).read_bytes() == GOOD
    assert bad.read_bytes() == corrupted  # never deleted behind the user's back


# ----------------------------------------------------------------------------- lock
def test_second_download_into_one_folder_fails_at_once(tmp_path: Path, capsys):
    from pancreas.cli import main

    with Server(GOOD) as server, lock_held_elsewhere(tmp_path) as pid:
        code = main(["download", "--out", str(tmp_path), "--url", server.url, "--md5", hashlib.md5(GOOD).hexdigest()])
        assert server.requests == []
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("pancreas download: error:")]
    assert code == 2 and len(errors) == 1 and f"pid {pid}" in errors[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]


def test_lock_is_held_through_download_and_extraction(tmp_path: Path, monkeypatch):
    import sources.download as download

    seen = []
    real_fetch, real_extract = download.download_file, download.extract_archive
    monkeypatch.setattr(
        download, "download_file", lambda *a, **k: seen.append(holds_lock(tmp_path)) or real_fetch(*a, **k)
    )
    monkeypatch.setattr(
        download, "extract_archive", lambda *a, **k: seen.append(holds_lock(tmp_path)) or real_extract(*a, **k)
    )
    with Server(GOOD) as server:
        download_dataset(config_for(server, GOOD), tmp_path)
    assert seen == [True, True] and not holds_lock(tmp_path)
