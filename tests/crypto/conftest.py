import gc
import types

import pytest

from fedloom.crypto.paillier import generate_keypair


@pytest.fixture(scope="session")
def keypair512():
    return generate_keypair(512)


@pytest.fixture(scope="session")
def keypair1024():
    return generate_keypair(1024)


def reachable(root):
    """Every object reachable from ``root`` through instance data (not through classes, modules, code or frames):
    the walk the key-custody tests use to show that no secret key is held."""
    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.CodeType,
            types.MethodType, types.FrameType)
    seen, stack, out = set(), [root], []
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, skip):
            continue
        seen.add(id(o))
        out.append(o)
        stack.extend(gc.get_referents(o))
    return out
