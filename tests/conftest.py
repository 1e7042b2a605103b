"""Shared test fixtures."""

from pathlib import Path

import pytest

# real sample cases (BraTS, ISLES'22, Cityscapes) kept outside the repository: ../shared/data
SHARED_DATA = Path(__file__).parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (relative to the project root); the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA


def error_chain(error: BaseException) -> list[str]:
    """The messages of an exception and its causes (MONAI wraps a config expression's error)."""
    chain = []
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    return chain
