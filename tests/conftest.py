import pytest

pytest_plugins = ["tests.testbed.fixtures"]


@pytest.fixture(scope="session")
def nix_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for nix-instantiate with every Nix dir in a temporary directory."""
    from tests.helpers.nix import make_nix_env

    return make_nix_env(tmp_path_factory.mktemp("nix"))
