"""Output folders and atomic writes (deconvnet.files)."""

from __future__ import annotations

import pytest

from deconvnet.errors import DeconvNetError
from deconvnet.files import writable_folder


def test_a_link_to_a_folder_that_does_not_exist_is_named_as_such(tmp_path):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(
        DeconvNetError, match=r"--out .*out is a link to .*gone, which does not exist"
    ):
        writable_folder(link)
    (tmp_path / "gone").mkdir()
    assert writable_folder(link) is False  # the folder it points to now exists
