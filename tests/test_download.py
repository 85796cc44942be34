"""`pancreas download` against a tiny tar served from 127.0.0.1 (no network)."""
from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest

from inference.config import DownloadConfig
from inference.download import DownloadError, download_dataset, download_file, extract_archive

NAME = "Task07_Pancreas.tar"


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


GOOD = make_tar({
    "Task07_Pancreas/dataset.json": b'{"name": "Pancreas"}',
    "Task07_Pancreas/imagesTr/pancreas_001.nii.gz": bytes(range(256)) * 300,
    "Task07_Pancreas/imagesTr/._pancreas_001.nii.gz": b"mac resource fork",
})


class Server:
    """HTTP server with Range support; can cut the first ``drop_after`` responses short."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.drop_after: int | None = None  # bytes sent before dropping (once)
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
                if owner.drop_after is not None:
                    self.wfile.write(body[:owner.drop_after])
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


def test_checksum_mismatch_deletes_part_and_extracts_nothing(tmp_path: Path):
    corrupted = GOOD[:1000] + b"X" + GOOD[1001:]
    with Server(corrupted) as server:
        with pytest.raises(DownloadError, match="does not match"):
            download_dataset(config_for(server, GOOD), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("members,links", [
    ({"../evil": b"x"}, None),
    ({"Task07_Pancreas/../../evil": b"x"}, None),
    ({"/tmp/evil_absolute": b"x"}, None),
    ({"Task07_Pancreas/ok": b"x"}, {"Task07_Pancreas/link": "../../evil"}),
    ({"Task07_Pancreas/ok": b"x"}, {"Task07_Pancreas/link": "/etc/passwd"}),
])
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
        assert main(bad) == 1
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
