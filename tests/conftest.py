"""Shared test fixtures."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]  # the repository
# real sample cases (BraTS, ISLES'22, Cityscapes) kept outside the repository: ../shared/data
SHARED_DATA = Path(__file__).parents[1].parent / "shared" / "data"
# bundle overrides for a one-epoch run of a quarter-width network on the own-data sets of the tests
SMALL_RUN = {"epochs": 1, "batch_size": 8, "num_workers": 0, "network_options": {"features": [8, 16, 32, 64]}}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (relative to the project root); the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA


def resolve_dotted(name: str):
    """The object a dotted ``pam_monai....`` name (in the docs or a config) stands for: the longest
    importable module, then attributes. A module that exists but fails to import raises its error."""
    import importlib

    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    raise ModuleNotFoundError(name)


def error_chain(error: BaseException) -> list[str]:
    """The messages of an exception and its causes (MONAI wraps a config expression's error)."""
    chain = []
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    return chain


def brats_fpa_training(tmp_path: Path, **overrides):
    """The brats_fpa bundle's ``train.json`` as a MONAI ``ConfigWorkflow`` (not yet initialised),
    writing into ``tmp_path`` and training on ``tmp_path/data`` (the synthetic stand-in when empty)."""
    from monai.bundle import ConfigWorkflow

    return ConfigWorkflow(
        config_file=str(ROOT / "bundles" / "brats_fpa" / "configs" / "train.json"),
        workflow_type="train",
        logging_file=False,
        bundle_root=str(tmp_path),
        dataset_dir=str(tmp_path / "data"),
        **overrides,
    )


def verify_bundle(configs: Path, network_options: dict) -> dict:
    """A bundle's ``metadata.json`` against the MONAI schema (``../shared/schema``, when present) and
    its network against the shapes the metadata declares; returns the metadata."""
    import json

    from monai.bundle import verify_metadata, verify_net_in_out

    schema = Path(__file__).parents[1].parent / "shared" / "schema" / "meta_schema_20240725.json"
    if schema.is_file():
        verify_metadata(
            meta_file=str(configs / "metadata.json"),
            filepath=str(schema),
            hash_val="06954cad2cc5d3784e72077ac76f0fc8",
        )
    verify_net_in_out(net_id="network_def", meta_file=str(configs / "metadata.json"),
                      config_file=str(configs / "train.json"), device="cpu", n=1, any=1,
                      network_options=network_options)  # fmt: skip
    return json.loads((configs / "metadata.json").read_text())
