"""Changes: change marks shared through a file by every process on one cache directory."""

from __future__ import annotations

import os
from pathlib import Path

from proxy.changes import SLOTS, Changes


def test_a_mark_made_through_one_mapping_is_seen_through_another(tmp_path: Path) -> None:
    """Two mappings of one file (two worker processes) see each other's marks at once."""
    one, other = Changes(tmp_path / "changes"), Changes(tmp_path / "changes")
    before = other.stamp("my-pkg")
    one.pages("my-pkg")
    assert other.stamp("my-pkg") != before


def test_pages_of_one_name_leave_another_names_stamp(tmp_path: Path) -> None:
    """A change to one name's pages moves only the stamps of names sharing its slot."""
    changes = Changes(tmp_path / "changes")
    before = changes.stamp("other-pkg")
    changes.pages("my-pkg")
    assert changes.stamp("other-pkg") == before


def test_files_and_all_pages_move_every_stamp(tmp_path: Path) -> None:
    """A file held or dropped, and every page dropped, change every page's stamp."""
    changes = Changes(tmp_path / "changes")
    first = changes.stamp("my-pkg")
    changes.files()
    second = changes.stamp("my-pkg")
    changes.all_pages()
    assert len({first, second, changes.stamp("my-pkg")}) == 3


def test_a_new_file_starts_unmarked_and_an_existing_one_keeps_its_marks(tmp_path: Path) -> None:
    """Opening the file again (a restart) keeps the marks written before."""
    Changes(tmp_path / "changes").pages("my-pkg")
    again = Changes(tmp_path / "changes")
    assert again.stamp("my-pkg") != Changes(tmp_path / "fresh").stamp("my-pkg")


def test_a_file_of_one_project_moves_only_that_names_stamp(tmp_path: Path) -> None:
    """A file of a named project held (or its metadata known) changes that name's pages
    only; other names' renderings stay valid."""
    changes = Changes(tmp_path / "changes")
    mine, other = changes.stamp("my-pkg"), changes.stamp("other-pkg")
    changes.files("my-pkg")
    assert changes.stamp("my-pkg") != mine
    assert changes.stamp("other-pkg") == other


def test_the_marks_file_holds_its_blocks_from_the_start(tmp_path: Path) -> None:
    """The file is allocated when opened, not sparse: a page of it first touched once the
    disk is full would kill the process (SIGBUS) instead of failing a write."""
    Changes(tmp_path / "changes")
    assert os.stat(tmp_path / "changes").st_blocks * 512 >= SLOTS * 8
