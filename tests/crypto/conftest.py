import pytest

from fedloom.crypto.paillier import generate_keypair


@pytest.fixture(scope="session")
def keypair512():
    return generate_keypair(512)


@pytest.fixture(scope="session")
def keypair1024():
    return generate_keypair(1024)
