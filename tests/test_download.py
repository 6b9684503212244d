"""Cache downloads without the network: file:// URLs, a refused port, a fake response."""
import io
import os
import urllib.error
import urllib.request

import pytest

from sketch_vae import download


@pytest.fixture()
def bucket(tmp_path):
  """A local copy of the bucket layout, served through file:// URLs."""
  root = tmp_path / "bucket"
  (root / "sketchrnn").mkdir(parents=True)
  (root / "full" / "simplified").mkdir(parents=True)
  (root / "full" / "raw").mkdir(parents=True)
  (root / "sketchrnn" / "cat.npz").write_bytes(b"npz bytes " * 1000)
  (root / "sketchrnn" / "The Eiffel Tower.npz").write_bytes(b"tower")
  (root / "full" / "simplified" / "cat.ndjson").write_text('{"drawing": []}\n')
  (root / "full" / "raw" / "cat.ndjson").write_text('{"raw": 1}\n')
  return root


def test_urls_and_cache_paths(tmp_path):
  assert download.url_of("cat") == ("https://storage.googleapis.com/quickdraw_dataset/"
                                    "sketchrnn/cat.npz")
  assert download.url_of("The Eiffel Tower", "raw") == (
      "https://storage.googleapis.com/quickdraw_dataset/full/raw/The%20Eiffel%20Tower.ndjson")
  assert (download.url_of("cat", "simplified", "file:///x/")
          == "file:///x/full/simplified/cat.ndjson")
  assert download.cache_path("cat", "sketchrnn", str(tmp_path)) == str(
      tmp_path / "quickdraw_dataset" / "sketchrnn" / "cat.npz")
  assert download.default_cache_dir() == os.path.expanduser("~/.cache/sketch_vae")
  for bad in ["", "../cat", "a/b", ".."]:
    with pytest.raises(ValueError, match="not a Quick Draw class name"):
      download.url_of(bad)
  with pytest.raises(ValueError, match="unknown kind"):
    download.url_of("cat", "binary")


def test_fetch_all_kinds_from_file_urls(bucket, tmp_path, capsys):
  cache, base = str(tmp_path / "cache"), bucket.as_uri()
  path = download.sketchrnn_npz("cat", cache_dir=cache, base_url=base)
  assert path == os.path.join(cache, "quickdraw_dataset", "sketchrnn", "cat.npz")
  assert open(path, "rb").read() == (bucket / "sketchrnn" / "cat.npz").read_bytes()
  err = capsys.readouterr().err
  assert f"downloading {base}/sketchrnn/cat.npz (10000 bytes)" in err
  assert f"saved {path} (10000 bytes)" in err
  simplified = download.ndjson("cat", cache_dir=cache, base_url=base, progress=False)
  raw = download.ndjson("cat", raw=True, cache_dir=cache, base_url=base, progress=False)
  assert open(simplified).read() == '{"drawing": []}\n'
  assert open(raw).read() == '{"raw": 1}\n'
  assert simplified.endswith(os.path.join("full", "simplified", "cat.ndjson"))
  assert capsys.readouterr().err == ""
  # The class name is quoted in the URL and kept as it is in the cache.
  tower = download.fetch("The Eiffel Tower", cache_dir=cache, base_url=base, progress=False)
  assert os.path.basename(tower) == "The Eiffel Tower.npz" and open(tower).read() == "tower"
  assert not [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".part")]


def test_cached_file_is_not_fetched_again(bucket, tmp_path):
  cache, base = str(tmp_path / "cache"), bucket.as_uri()
  first = download.sketchrnn_npz("cat", cache_dir=cache, base_url=base, progress=False)
  (bucket / "sketchrnn" / "cat.npz").write_bytes(b"changed on the server")
  again = download.sketchrnn_npz("cat", cache_dir=cache, base_url="http://127.0.0.1:9/")
  assert again == first and open(again, "rb").read() == b"npz bytes " * 1000


def test_offline_error_says_where_to_put_the_file(tmp_path):
  cache = str(tmp_path / "cache")
  with pytest.raises(download.DownloadError) as e:
    download.sketchrnn_npz("cat", cache_dir=cache, base_url="http://127.0.0.1:9/", timeout=5)
  dest = download.cache_path("cat", "sketchrnn", cache)
  message = str(e.value)
  assert "http://127.0.0.1:9/sketchrnn/cat.npz" in message
  assert "seems to be offline" in message
  assert f"place it at {dest}" in message
  assert not os.path.exists(dest)
  assert os.listdir(os.path.dirname(dest)) == []  # no partial file left


class _FakeResponse(io.BytesIO):
  def __init__(self, body, length):
    super().__init__(body)
    self.headers = {"Content-Length": str(length)}


def test_http_errors_and_cut_short_downloads(tmp_path, monkeypatch, capsys):
  cache = str(tmp_path / "cache")
  dest = download.cache_path("cat", "sketchrnn", cache)

  def not_found(url, timeout):
    raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
  monkeypatch.setattr(urllib.request, "urlopen", not_found)
  with pytest.raises(download.DownloadError, match="HTTP 404.*class name.*place it at"):
    download.sketchrnn_npz("cat", cache_dir=cache)

  monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _FakeResponse(b"abc", 10))
  with pytest.raises(download.DownloadError, match="got 3 of 10 bytes"):
    download.sketchrnn_npz("cat", cache_dir=cache, progress=False)
  assert not os.path.exists(dest) and os.listdir(os.path.dirname(dest)) == []

  # Progress lines for a long download (the threshold made small here).
  monkeypatch.setattr(download, "CHUNK", 4)
  monkeypatch.setattr(download, "PROGRESS_EVERY", 8)
  monkeypatch.setattr(urllib.request, "urlopen",
                      lambda url, timeout: _FakeResponse(b"x" * 20, 20))
  capsys.readouterr()
  assert download.sketchrnn_npz("cat", cache_dir=cache) == dest
  err = capsys.readouterr().err.splitlines()
  assert err[1:3] == ["  8 of 20 bytes", "  16 of 20 bytes"]
  assert open(dest, "rb").read() == b"x" * 20
