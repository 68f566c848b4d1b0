"""Shared fixtures. Names are stable: other test files rely on them.

- ``bdtnp_dir``: path to the shared copy of the BDTNP text files (``../shared/data/bdtnp``); skips if absent.
- ``tiny_config``: a ``Config`` whose dataset is a tiny synthetic tissue (5 sections x 60-150 cells x 20
  genes, 4 cell types, 2D) and whose ``data.max_cells`` is 64.
- ``synthetic_raw``: (session) raw folder written by ``fetch-data`` for ``tiny_config`` (``synthetic.h5ad``).
- ``tiny_processed`` / ``tiny_processed_3d``: (session) processed folders (``cells.parquet`` +
  ``manifest.json``) of the tiny synthetic tissue in 2D / 3D; open them with ``ProcessedData(path)``.
- ``design_note_yaml``: a YAML file with the design note's config block verbatim.
- ``bdtnp_processed``: (session) BDTNP fetched from the local copy and preprocessed with the default
  dataset config (8 equal-count slabs along x); skips if the shared copy is absent.
Session-scoped folders are shared by tests: read them, never write into them.
Every test runs with one torch thread (autouse ``_one_torch_thread``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from alphastomics.config import Config, DataConfig, DatasetConfig, SyntheticConfig

BDTNP_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "bdtnp"


def _tiny(dims: int = 2) -> Config:
    synthetic = SyntheticConfig(num_sections=5, min_cells=60, max_cells=150, num_genes=20, num_cell_types=4,
                                dims=dims, seed=7)
    dataset = DatasetConfig(name=f"tiny{dims}d", source="synthetic", synthetic=synthetic)
    return Config(dataset=dataset, data=DataConfig(max_cells=64))


# The design note's ablation block, as written there (its keys and spellings are the contract).
DESIGN_NOTE_BLOCK = """
TransformerLayer_setting:
  num_layers: 6
  num_heads: 8
  dropout: 0.1
  use_gated_attention: true
  gate_type: "headwise"
  use_qk_norm: true
training:
  batch_size: 1024
  accumulate_grad_batches: 4
  gradient_clip_val: 0.5
  learning_rate: 1e-4
"""


@pytest.fixture
def design_note_yaml(tmp_path) -> Path:
    """A YAML file holding the design note's config block verbatim."""
    path = tmp_path / "design_note.yaml"
    path.write_text(DESIGN_NOTE_BLOCK)
    return path


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # Tests use tiny tensors: intra-op threads only add contention on shared 2-core CI machines, where
    # pytest-xdist already runs one worker per core (measured 10-40x slower under load otherwise).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def bdtnp_dir() -> Path:
    if not (BDTNP_DIR / "dge.txt").is_file():
        pytest.skip(f"shared BDTNP copy not found at {BDTNP_DIR}")
    return BDTNP_DIR


@pytest.fixture
def tiny_config() -> Config:
    return _tiny(2)


def _fetch_and_preprocess(root: Path, cfg: Config) -> tuple[Path, Path]:
    from alphastomics.data.fetch import fetch_synthetic
    from alphastomics.data.preprocess import preprocess

    raw, proc = root / "raw", root / "processed"
    fetch_synthetic(raw, cfg.dataset.synthetic)
    preprocess(raw, cfg.dataset, proc)
    return raw, proc


@pytest.fixture(scope="session")
def _tiny2d(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _fetch_and_preprocess(tmp_path_factory.mktemp("tiny2d"), _tiny(2))


@pytest.fixture(scope="session")
def synthetic_raw(_tiny2d: tuple[Path, Path]) -> Path:
    return _tiny2d[0]


@pytest.fixture(scope="session")
def tiny_processed(_tiny2d: tuple[Path, Path]) -> Path:
    return _tiny2d[1]


@pytest.fixture(scope="session")
def tiny_processed_3d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fetch_and_preprocess(tmp_path_factory.mktemp("tiny3d"), _tiny(3))[1]


@pytest.fixture(scope="session")
def bdtnp_processed(tmp_path_factory: pytest.TempPathFactory, bdtnp_dir: Path) -> Path:
    from alphastomics.data.fetch import fetch_bdtnp
    from alphastomics.data.preprocess import preprocess

    root = tmp_path_factory.mktemp("bdtnp")
    fetch_bdtnp(root / "raw", bdtnp_dir)
    preprocess(root / "raw", dataclasses.replace(DatasetConfig(), name="bdtnp", source="bdtnp"), root / "processed")
    return root / "processed"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The tests on the real SLURM cluster (tests/test_slurm.py) spend most of their minutes waiting for jobs:
    # first in the order, so that under `make test-all` (-n 2 --dist loadfile) the other worker runs the rest.
    items.sort(key=lambda item: item.get_closest_marker("slurm") is None)
