"""The ``fetch-data`` stage: get a data set's raw files into one folder, each checksum-verified, with
``fetch.json`` naming them (read back by ``alphastomics.raw.open_raw``).

Sources (``dataset.source``):
- ``bdtnp``: the BDTNP Drosophila embryo atlas (Fowlkes et al., Cell 2008; 3,039 cells x 84 genes, 3D) as
  published in the PyPI source archive ``novosparc==0.4.4`` (Nitzan et al., Nature 2019), checksum-verified;
- ``synthetic``: a seeded multi-section layered tissue with known cell types (``alphastomics.synthetic``),
  written as an ``.h5ad``;
- ``h5ad`` / ``csv``: the user's own files (formats in ``alphastomics.raw``), linked and validated now so that
  a wrong file fails here with the user's path.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

from alphastomics.artifacts import DataError, atomic_dir
from alphastomics.config import DatasetConfig, SyntheticConfig
from alphastomics.raw import FETCH_JSON, open_raw, sha256_file, verify_sha256
from alphastomics.splits import split_sections
from alphastomics.synthetic import generate_synthetic

NOVOSPARC_URLS = ("https://pypi.org/pypi/novosparc/0.4.4/json", "https://pypi.org/pypi/novosparc/json")
NOVOSPARC_ARCHIVE = "novosparc-0.4.4.tar.gz"
NOVOSPARC_SHA256 = "ddd6a1aec2000e95c4f1e5245551b59470d81548b9338ab241767de6cc61adc4"
BDTNP_FILES = {  # sha256 from ../shared/data/bdtnp/README.md
    "dge.txt": "54f92f3e20e392f23b39b87d5b8d19a2158fed761f1ce7a0a5b7fb4ec176d388",
    "geometry.txt": "7db4e560581020bf647df915d39941f8ec3d472c351883aeff836d7aa6069762",
}
SYNTHETIC_FILE = "synthetic.h5ad"


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


def fetch_bdtnp(out: Path, local_copy: Path | None = None) -> dict[str, Any]:
    """Write ``dge.txt``, ``geometry.txt`` and ``fetch.json`` to ``out``, every file checksum-verified."""
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
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.suffix == f".{dcfg.source}" and p.is_file())
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
            try:
                os.link(f, tmp / f.name)  # no copy of large files on the same file system
            except OSError:
                shutil.copyfile(f, tmp / f.name)
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


def fetch_synthetic(out: Path, scfg: SyntheticConfig) -> dict[str, Any]:
    with atomic_dir(out) as tmp:
        generate_synthetic(scfg).write_h5ad(tmp / SYNTHETIC_FILE)
        info = {
            "source": "synthetic",
            "origin": f"alphastomics.synthetic seed={scfg.seed}",
            "files": {SYNTHETIC_FILE: sha256_file(tmp / SYNTHETIC_FILE)},
        }
        _write_json(tmp / FETCH_JSON, info)
    return info


def main(args: Any, cfg: Any) -> int:
    """``fetch-data``: get the raw files of ``cfg.dataset`` into ``args.out``."""
    d: DatasetConfig = cfg.dataset
    if d.source == "bdtnp":
        local = args.local_copy or (Path(d.path) if d.path else None)
        info = fetch_bdtnp(args.out, local)
    elif d.source == "synthetic":
        info = fetch_synthetic(args.out, d.synthetic)
    else:
        info = fetch_user_files(args.out, d)
    print(f"fetch-data: {d.name} ({d.source}) -> {args.out}: {', '.join(info['files'])}")
    return 0
