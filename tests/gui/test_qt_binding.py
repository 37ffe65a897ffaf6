"""The installed Qt binding keeps Python's reference counts: PySide6 6.12.0 under Python 3.10/3.11 releases None
once too often on every call into Qt, and the app aborts after some thousands of calls ("none_dealloc")."""

from __future__ import annotations

import sys

from PySide6.QtWidgets import QCheckBox, QLabel


def test_calls_into_qt_keep_the_reference_counts_of_none_and_booleans(qapp) -> None:
    label, box = QLabel("x"), QCheckBox("y")
    before = [sys.getrefcount(value) for value in (None, True, False)]
    for _ in range(1000):
        label.setText("z")  # returns None
        label.setVisible(False)
        box.setChecked(True)
        box.isChecked()  # returns a bool
        box.isHidden()
    after = [sys.getrefcount(value) for value in (None, True, False)]
    lost = [b - a for a, b in zip(after, before, strict=True)]
    assert max(lost) < 100, f"None, True, False lost {lost} references in 1000 calls: use PySide6 < 6.12"
