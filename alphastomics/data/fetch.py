"""The ``fetch-data`` stage: get a data set's raw files into one folder, each checksum-verified, with
``fetch.json`` naming them (read back by ``alphastomics.data.raw.open_raw``).

Sources (``dataset.source``):
- ``bdtnp``: the BDTNP Drosophila embryo atlas (Fowlkes et al., Cell 2008; 3,039 cells x 84 genes, 3D) as
  published in the PyPI source archive ``novosparc==0.4.4`` (Nitzan et al., Nature 2019), checksum-verified;
- ``synthetic``: a seeded multi-section layered tissue with known cell types (``alphastomics.data.synthetic``),
  written as an ``.h5ad``;
- ``h5ad`` / ``csv``: the user's own files (formats in ``alphastomics.data.raw``), linked and validated now so that
  a wrong file fails here with the user's path;
- ``dataset.files`` (any reader: csv, h5ad, rdata): published files named by address and sha256, taken from
  the mirror (``--mirror``, else ``$ALPHASTOMICS_DATA_MIRROR``) when it holds them, else downloaded with
  pooch; either way only the published bytes pass. bdtnp looks in the mirror (``MIRROR/bdtnp``) before PyPI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

from alphastomics.artifacts import DataError, atomic_dir
from alphastomics.config import DatasetConfig, SyntheticConfig
from alphastomics.data.raw import FETCH_JSON, open_raw, sha256_file, verify_sha256
from alphastomics.data.splits import split_sections
from alphastomics.data.synthetic import generate_synthetic

NOVOSPARC_URLS = ("https://pypi.org/pypi/novosparc/0.4.4/json", "https://pypi.org/pypi/novosparc/json")
NOVOSPARC_ARCHIVE = "novosparc-0.4.4.tar.gz"
NOVOSPARC_SHA256 = "ddd6a1aec2000e95c4f1e5245551b59470d81548b9338ab241767de6cc61adc4"
BDTNP_FILES = {  # sha256 from ../shared/data/bdtnp/README.md
    "dge.txt": "54f92f3e20e392f23b39b87d5b8d19a2158fed761f1ce7a0a5b7fb4ec176d388",
    "geometry.txt": "7db4e560581020bf647df915d39941f8ec3d472c351883aeff836d7aa6069762",
}
SYNTHETIC_FILE = "synthetic.h5ad"
SUFFIXES = {"rdata": (".rdata", ".rda", ".rds")}  # files of a dataset.path folder, by source
MIRROR_ENV = "ALPHASTOMICS_DATA_MIRROR"
DOWNLOAD_TIMEOUT_S = 60  # per connection / read, not for the whole file
MIRROR_FIX = f"check data_mirror (config) or {MIRROR_ENV}"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")


def _download_archive(dest: Path) -> str:
    """Download the novosparc sdist into ``dest``; return its URL. The checksum is verified by the caller."""
    url = None
    for index in NOVOSPARC_URLS:
        try:
            with urllib.request.urlopen(index, timeout=60) as r:
                meta = json.load(r)
        except OSError:
            continue
        files = meta.get("urls", []) + meta.get("releases", {}).get("0.4.4", [])
        url = next((u["url"] for u in files if u.get("filename") == NOVOSPARC_ARCHIVE), None)
        if url:
            break
    if url is None:
        raise DataError(
            f"{NOVOSPARC_URLS[0]}: cannot find {NOVOSPARC_ARCHIVE} on PyPI; check the network or pass "
            "--local-copy DIR with dge.txt and geometry.txt"
        )
    with urllib.request.urlopen(url, timeout=300) as r, open(dest, "wb") as f:
        shutil.copyfileobj(r, f, 1 << 20)
    return url


def fetch_bdtnp(out: Path, local_copy: Path | None = None, mirror: Path | None = None) -> dict[str, Any]:
    """Write ``dge.txt``, ``geometry.txt`` and ``fetch.json`` to ``out``, every file checksum-verified.
    Without a local copy, a ``mirror`` folder holding both files stands in for the download (offline)."""
    if local_copy is None and mirror is not None and all((Path(mirror) / n).is_file() for n in BDTNP_FILES):
        local_copy = Path(mirror)
    with atomic_dir(out) as tmp:
        if local_copy is not None:
            local_copy = Path(local_copy)
            for name, sha in BDTNP_FILES.items():
                src = local_copy / name
                if not src.is_file():
                    raise DataError(f"{src}: file not found; pass a folder holding dge.txt and geometry.txt")
                shutil.copyfile(src, tmp / name)
                verify_sha256(tmp / name, sha, str(src), "use an unmodified copy of the novosparc 0.4.4 file")
            origin = str(local_copy.resolve())
        else:
            archive = tmp / NOVOSPARC_ARCHIVE
            origin = _download_archive(archive)
            verify_sha256(archive, NOVOSPARC_SHA256, origin, "the download is corrupt or changed; retry")
            with tarfile.open(archive) as tar:
                for name in BDTNP_FILES:
                    member = tar.getmember(f"novosparc-0.4.4/novosparc/datasets/bdtnp/{name}")
                    with tar.extractfile(member) as src, open(tmp / name, "wb") as dst:  # type: ignore[union-attr]
                        shutil.copyfileobj(src, dst)
            archive.unlink()
            for name, sha in BDTNP_FILES.items():
                verify_sha256(tmp / name, sha, f"{origin}:{name}", "the archive content changed; report it")
        info = {"source": "bdtnp", "origin": origin, "files": dict(BDTNP_FILES)}
        _write_json(tmp / FETCH_JSON, info)
    return info


def fetch_user_files(out: Path, dcfg: DatasetConfig) -> dict[str, Any]:
    """Link (or copy) the configured h5ad/csv file(s) into ``out`` so preprocess reads only ``out``."""
    if not dcfg.path:
        raise DataError(f"dataset.path: not set for source '{dcfg.source}'; set it to a .{dcfg.source} file or folder")
    src = Path(dcfg.path)
    suffixes = SUFFIXES.get(dcfg.source, (f".{dcfg.source}",))
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.suffix.lower() in suffixes and p.is_file())
    elif src.is_file():
        files = [src]
    else:
        raise DataError(f"{src}: dataset.path does not exist; point it at a .{dcfg.source} file or folder")
    if not files:
        raise DataError(f"{src}: no .{dcfg.source} files in the folder; add them or fix dataset.path")
    with atomic_dir(out) as tmp:
        for f in files:
            if f.stat().st_size == 0:
                raise DataError(f"{f}: the file is empty; remove it or give a non-empty file")
            _link_or_copy(f, tmp / f.name)
        info = {
            "source": dcfg.source,
            "origin": str(src.resolve()),
            "files": {f.name: sha256_file(tmp / f.name) for f in files},
            "paths": {f.name: str(f.resolve()) for f in files},  # errors name these, not the links
        }
        _write_json(tmp / FETCH_JSON, info)
        # Validate now, so a wrong file fails here with the user's path, not in a later stage.
        data = open_raw(tmp, dcfg, verify=False)
        split_sections(data, dcfg)
    return info


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # no copy of large files on the same file system
    except OSError:
        shutil.copyfile(src, dst)


def _check_files(dcfg: DatasetConfig) -> None:
    """``dataset.files`` entries that can name a file in a folder and a published checksum."""
    if dcfg.source == "synthetic":
        raise DataError("config: dataset.files is set but source 'synthetic' is generated; "
                        "remove dataset.files")
    if dcfg.path:
        raise DataError(f"config: dataset.path ({dcfg.path}) and dataset.files are both set; "
                        "keep one of them")
    names = [f.name for f in dcfg.files]
    for i, f in enumerate(dcfg.files):
        if not f.name or Path(f.name).name != f.name or f.name in (".", "..", FETCH_JSON):
            raise DataError(f"config: dataset.files[{i}].name is '{f.name}'; "
                            "give a plain file name (no folder)")
        if names.count(f.name) > 1:
            raise DataError(f"config: dataset.files names '{f.name}' twice; give each file once")
        if not re.fullmatch(r"[0-9a-f]{64}", f.sha256.lower()):
            raise DataError(f"config: dataset.files[{i}].sha256 is '{f.sha256}'; "
                            "give the 64 hex digits of the published file's sha256")


def _download(url: str, name: str, sha256: str, folder: Path, where: str) -> None:
    """``url`` -> ``folder/name`` by pooch, kept only if its sha256 matches; every failure one DataError."""
    import pooch
    import requests

    fix = f"or put the published file in {where} ({MIRROR_FIX})"
    try:
        pooch.retrieve(url, known_hash=f"sha256:{sha256}", fname=name, path=folder, progressbar=False,
                       downloader=pooch.HTTPDownloader(progressbar=False, timeout=DOWNLOAD_TIMEOUT_S))
    except ValueError as err:  # a hash mismatch, or a url pooch or requests cannot use
        if "does not match the known hash" not in str(err):
            raise DataError(f"{name}: cannot download {url} ({err}); fix the url in dataset.files") from None
        found = re.search(r"got ([0-9a-f]+)", str(err))
        got = found.group(1) if found else "?"
        raise DataError(f"{name}: sha256 mismatch (expected {sha256}, got {got}) from {url}; the server sent "
                        f"other bytes than the published file: fix dataset.files {fix}") from None
    except requests.exceptions.HTTPError as err:
        code = err.response.status_code if err.response is not None else "error"
        raise DataError(f"{name}: download failed (HTTP {code}) from {url}; "
                        f"fix the url in dataset.files {fix}") from None
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as err:
        raise DataError(f"{name}: the download from {url} ended early ({type(err).__name__}: "
                        f"truncated body); retry, {fix}") from None
    except requests.exceptions.RequestException as err:
        raise DataError(f"{name}: cannot download {url} ({type(err).__name__}: no network or no server); "
                        f"run where the network reaches it, {fix}") from None


def fetch_public(out: Path, dcfg: DatasetConfig, mirror: Path | None) -> dict[str, Any]:
    """The published files of ``dataset.files``: each from ``mirror/mirror_folder`` when there (hard link or
    copy), else downloaded; each sha256-verified; then validated by the data set's reader."""
    _check_files(dcfg)
    folder = None if mirror is None else Path(mirror) / (dcfg.mirror_folder or "")
    where = str(folder) if folder is not None else f"MIRROR/{dcfg.mirror_folder or ''}"
    with atomic_dir(out) as tmp:
        came_from = {}
        for f in dcfg.files:
            local = None if folder is None else folder / f.name
            if local is not None and local.is_file():
                _link_or_copy(local, tmp / f.name)
                actual = sha256_file(tmp / f.name)
                if actual != f.sha256.lower():
                    raise DataError(f"{f.name}: sha256 mismatch (expected {f.sha256}, got {actual}) from "
                                    f"{local}; the mirror copy is not the published file: delete it or "
                                    f"{MIRROR_FIX}")
                came_from[f.name] = str(local.resolve())
            else:
                _download(f.url, f.name, f.sha256.lower(), tmp, where)
                came_from[f.name] = f.url
        urls = {f.name: f.url for f in dcfg.files}
        local_only = all(v != urls[k] for k, v in came_from.items())
        info = {
            "source": dcfg.source,
            "origin": where if local_only else os.path.commonprefix(list(urls.values())).rsplit("/", 1)[0],
            "files": {f.name: f.sha256.lower() for f in dcfg.files},
            "urls": urls,
            "mirror": None if folder is None else str(folder.resolve()),
            "paths": came_from,  # where each file came from (mirror file or url): errors name these
        }
        _write_json(tmp / FETCH_JSON, info)
        data = open_raw(tmp, dcfg, verify=False)
        split_sections(data, dcfg)
    return info


def data_mirror(arg: Path | None) -> Path | None:
    """The mirror of public data files: ``--mirror``, else ``$ALPHASTOMICS_DATA_MIRROR``, else none."""
    if arg is not None:
        return Path(arg)
    env = os.environ.get(MIRROR_ENV)
    return Path(env) if env else None


def fetch_synthetic(out: Path, scfg: SyntheticConfig) -> dict[str, Any]:
    with atomic_dir(out) as tmp:
        generate_synthetic(scfg).write_h5ad(tmp / SYNTHETIC_FILE)
        info = {
            "source": "synthetic",
            "origin": f"alphastomics.data.synthetic seed={scfg.seed}",
            "files": {SYNTHETIC_FILE: sha256_file(tmp / SYNTHETIC_FILE)},
        }
        _write_json(tmp / FETCH_JSON, info)
    return info


def main(args: Any, cfg: Any) -> int:
    """``fetch-data``: get the raw files of ``cfg.dataset`` into ``args.out``."""
    d: DatasetConfig = cfg.dataset
    mirror = data_mirror(getattr(args, "mirror", None))
    if d.files:
        info = fetch_public(args.out, d, mirror)
    elif d.source == "bdtnp":
        local = args.local_copy or (Path(d.path) if d.path else None)
        info = fetch_bdtnp(args.out, local, None if mirror is None else mirror / (d.mirror_folder or "bdtnp"))
    elif d.source == "synthetic":
        info = fetch_synthetic(args.out, d.synthetic)
    else:
        info = fetch_user_files(args.out, d)
    print(f"fetch-data: {d.name} ({d.source}) -> {args.out}: {', '.join(info['files'])}")
    return 0
