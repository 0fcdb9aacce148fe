import pytest

pytest_plugins = ["tests.testbed.fixtures"]


@pytest.fixture(scope="session")
def nix_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for nix-instantiate with every Nix dir in a temporary directory."""
    from tests.helpers.nix import make_nix_env

    return make_nix_env(tmp_path_factory.mktemp("nix"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Whatever needs the test bed (root, a network namespace, the PVE simulator, QEMU) is a `vm`
    test: `pytest -m "not vm"` is the fast lane of pure tests for the edit loop."""
    for item in items:
        if "testbed" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("vm"):
            item.add_marker(pytest.mark.vm)
