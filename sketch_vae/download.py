"""Official Quick Draw files, fetched once into a local cache.

The paper's experiments use the official per-class files (`sketchrnn/<class>.npz`,
70000 / 2500 / 2500 sketches) and the ndjson drawings they were made from;
none of them ship with this repository. Files are kept under
`<cache_dir>/quickdraw_dataset/<path in the bucket>`, so a file copied there by
hand (on a machine without internet) is found exactly as a downloaded one.

Only urllib is used. A download goes to a temporary file in the target folder
and is renamed when complete, so an interrupted run never leaves a truncated
file that a later run would take for a cached one.
"""
from __future__ import annotations

import http.client
import os
import secrets
import sys
import urllib.error
import urllib.parse
import urllib.request

BASE_URL = "https://storage.googleapis.com/quickdraw_dataset"
# kind -> (folder in the bucket, file suffix)
KINDS = {
    "sketchrnn": ("sketchrnn", ".npz"),
    "simplified": ("full/simplified", ".ndjson"),
    "raw": ("full/raw", ".ndjson"),
}
CHUNK = 1 << 20
PROGRESS_EVERY = 8 << 20  # bytes between progress lines


class DownloadError(OSError):
  """A file could not be fetched; the message says where to put it by hand."""


def default_cache_dir() -> str:
  return os.path.join(os.path.expanduser("~"), ".cache", "sketch_vae")


def _relative(name: str, kind: str) -> str:
  if kind not in KINDS:
    raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(KINDS)}")
  if not name or "/" in name or "\\" in name or name in (".", ".."):
    raise ValueError(f"{name!r} is not a Quick Draw class name")
  folder, suffix = KINDS[kind]
  return f"{folder}/{name}{suffix}"


def url_of(name: str, kind: str = "sketchrnn", base_url: str = BASE_URL) -> str:
  """The file's URL; class names such as "The Eiffel Tower" are %-quoted."""
  return base_url.rstrip("/") + "/" + urllib.parse.quote(_relative(name, kind))


def cache_path(name: str, kind: str = "sketchrnn", cache_dir: str | None = None) -> str:
  """Where the file lives in the cache (the class name unquoted)."""
  root = cache_dir if cache_dir is not None else default_cache_dir()
  return os.path.join(root, "quickdraw_dataset", *_relative(name, kind).split("/"))


def _say(progress: bool, text: str) -> None:
  if progress:
    print(text, file=sys.stderr, flush=True)


def download(url: str, dest: str, progress: bool = True, timeout: float = 60.0) -> str:
  """Fetches `url` to `dest` atomically (temporary file, then rename)."""
  folder = os.path.dirname(os.path.abspath(dest))
  os.makedirs(folder, exist_ok=True)
  manual = (f"To use this file offline, fetch {url} on a machine with internet access and "
            f"place it at {dest}")
  # A name of our own, opened with "x" (mkstemp would make the file private).
  tmp = os.path.join(folder, f".{os.path.basename(dest)}.{secrets.token_hex(4)}.part")
  try:
    with open(tmp, "xb") as out:
      try:
        response = urllib.request.urlopen(url, timeout=timeout)
      except urllib.error.HTTPError as e:
        hint = " (no such file: is the class name spelled as on quickdraw.withgoogle.com?)"
        raise DownloadError(f"{url}: the server answered HTTP {e.code}"
                            f"{hint if e.code == 404 else ''}. {manual}.") from None
      except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"{url}: cannot connect ({reason}); this machine seems to be offline "
                            f"or cannot reach the server. {manual}.") from None
      with response:
        total = response.headers.get("Content-Length")
        total = int(total) if total and total.isdigit() else None
        of_total = f" of {total}" if total is not None else ""
        size = f"{total} bytes" if total is not None else "size unknown"
        _say(progress, f"downloading {url} ({size})")
        done, reported = 0, 0
        while True:
          try:
            chunk = response.read(CHUNK)
          except (OSError, http.client.HTTPException) as e:
            raise DownloadError(f"{url}: the connection broke after {done} bytes ({e}); "
                                f"the machine may have gone offline. {manual}.") from None
          if not chunk:
            break
          out.write(chunk)
          done += len(chunk)
          if done - reported >= PROGRESS_EVERY:
            _say(progress, f"  {done}{of_total} bytes")
            reported = done
    if total is not None and done != total:
      raise DownloadError(f"{url}: got {done} of {total} bytes; the download was cut short. "
                          f"{manual}.")
    os.replace(tmp, dest)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  _say(progress, f"saved {dest} ({done} bytes)")
  return dest


def fetch(name: str, kind: str = "sketchrnn", *, cache_dir: str | None = None,
          base_url: str = BASE_URL, progress: bool = True, timeout: float = 60.0) -> str:
  """Path of the cached file for class `name`; downloads it first if missing.

  kind: "sketchrnn" (stroke-3 `.npz`), "simplified" or "raw" (`.ndjson`).
  """
  dest = cache_path(name, kind, cache_dir)
  if os.path.isfile(dest):
    return dest
  return download(url_of(name, kind, base_url), dest, progress=progress, timeout=timeout)


def sketchrnn_npz(name: str, **options) -> str:
  """`quickdraw_dataset/sketchrnn/<name>.npz`, the paper's per-class data."""
  return fetch(name, "sketchrnn", **options)


def ndjson(name: str, raw: bool = False, **options) -> str:
  """`quickdraw_dataset/full/simplified/<name>.ndjson`, or `full/raw/` with `raw`."""
  return fetch(name, "raw" if raw else "simplified", **options)
