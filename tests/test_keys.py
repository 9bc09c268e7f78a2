"""Key files shared by gateway processes: made once, private, reused."""

import stat

import pytest

from schoolgate.keys import load_or_create_secret


def test_created_private_once_and_reused(tmp_path):
    path = tmp_path / "var" / "gateway.secret"
    key = load_or_create_secret(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == key
    assert list(path.parent.iterdir()) == [path]  # no staging files left


def test_a_damaged_key_file_is_a_clear_error(tmp_path):
    path = tmp_path / "gateway.secret"
    path.write_text("not hex\n")
    with pytest.raises(ValueError, match="does not hold a hex key"):
        load_or_create_secret(path)


def test_private_whatever_the_umask_and_an_open_key_file_is_closed(tmp_path):
    import os
    old = os.umask(0)
    try:
        path = tmp_path / "keys" / "gateway.secret"
        load_or_create_secret(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    load_or_create_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
