"""The reward labeling widget shared by the rqt plugin and the standalone ``sernf-label`` window.

Two pages: **Offline** (episode list, camera frames, timeline, reward events, subtask success,
undo/redo, versioned saves) and **Live** (big reward / end-episode buttons with hotkeys, the
policy node's diagnostics). The widget never imports rclpy: the live page gets a factory that
builds the ROS link (``live_node.LiveLink``) when the operator connects.

Offline shortcuts (active while the offline page has focus):
Left/Right one frame, Shift+Left/Right one second, Home/End first/last frame,
PageUp/PageDown (or ,/.) previous/next reward event, R place a reward (chosen value and
subtask) at the cursor, 1..9 place a reward for subtask 1..9, Delete remove the event under
the cursor (else the selected one),
Alt+Left/Right move the selected event by one frame, Shift+1..9 toggle subtask 1..9's success,
Ctrl+Z undo, Ctrl+Shift+Z / Ctrl+Y redo, Ctrl+S save, Ctrl+Down/Up next/previous episode,
Ctrl+U next unlabeled episode.
Live hotkeys (live page): F1..F8 reward for subtask 1..8 (F1 without subtasks: a plain reward),
F10 END the episode with the chosen reason, F12 ABORT it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sernf_data.labels import LabelConflictError, default_author

from .episode_source import EpisodeData, EpisodeRow, EpisodeSource
from .label_model import LabelDocument, next_event_step, previous_event_step
from .live_model import EpisodeEnd, OperatorReward, PolicyStatus, link_state
from .qt import QtCore, QtGui, QtWidgets, Signal
from .timeline import FrameView, TimelineWidget, subtask_color

__all__ = ["RewardLabelingWidget"]

_COLUMNS = ("episode", "source", "operator", "steps", "labels", "reward", "success")
Key = QtCore.Qt.Key
Mod = QtCore.Qt.KeyboardModifier


def _seq(*keys: Any) -> QtGui.QKeySequence:
    combo = keys[0]
    for k in keys[1:]:
        combo = combo | k
    return QtGui.QKeySequence(combo)


class RewardLabelingWidget(QtWidgets.QWidget):
    """Offline and live reward labeling (see the module docstring for the shortcuts)."""

    statusMessage = Signal(str)  # noqa: N815 - Qt signal naming

    def __init__(self, parent: QtWidgets.QWidget | None = None, *,
                 live_link_factory: Callable[[], Any] | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("RewardLabelingWidget")
        self.source: EpisodeSource | None = None
        self.data: EpisodeData | None = None
        self.doc: LabelDocument | None = None
        self.subtasks: tuple[str, ...] = ()
        self.rows: list[EpisodeRow] = []
        self._docs: dict[str, LabelDocument] = {}  # edits kept per episode while browsing
        self.conflict: LabelConflictError | None = None
        self._live_link_factory = live_link_factory
        self.live_link: Any = None
        self.sent_log: list[str] = []
        self.last_message = ""
        self._build_ui()
        self._build_shortcuts()
        self._live_timer = QtCore.QTimer(self)
        self._live_timer.setInterval(200)
        self._live_timer.timeout.connect(self._poll_live)

    # =========================================================================== layout

    def _build_ui(self) -> None:
        self.tabs = QtWidgets.QTabWidget(self)
        outer = QtWidgets.QVBoxLayout(self)
        outer.setContentsMargins(2, 2, 2, 2)
        outer.addWidget(self.tabs)
        self.offline_page = QtWidgets.QWidget()
        self.live_page = QtWidgets.QWidget()
        self.tabs.addTab(self.offline_page, "Offline labeling")
        self.tabs.addTab(self.live_page, "Live")
        self._build_offline()
        self._build_live()
        # Hotkeys belong to the page with focus: give the shown page the focus.
        self.live_page.setFocusPolicy(QtCore.Qt.FocusPolicy.StrongFocus)
        self.tabs.currentChanged.connect(self._focus_current_page)

    def _focus_current_page(self, index: int) -> None:
        (self.live_page if index == 1 else self.timeline).setFocus()

    def _build_offline(self) -> None:
        page = self.offline_page
        top = QtWidgets.QHBoxLayout()
        self.location_edit = QtWidgets.QLineEdit()
        self.location_edit.setPlaceholderText("episode store (path or URL) or a folder of bags")
        self.open_button = QtWidgets.QPushButton("Open")
        self.open_button.clicked.connect(lambda: self.open_location(self.location_edit.text()))
        self.browse_button = QtWidgets.QPushButton("Browse…")
        self.browse_button.clicked.connect(self._browse)
        self.unlabeled_only = QtWidgets.QCheckBox("only unlabeled")
        self.unlabeled_only.toggled.connect(lambda _: self._fill_table())
        self.author_edit = QtWidgets.QLineEdit(default_author())
        self.author_edit.setMaximumWidth(140)
        top.addWidget(QtWidgets.QLabel("Episodes:"))
        top.addWidget(self.location_edit, 1)
        top.addWidget(self.open_button)
        top.addWidget(self.browse_button)
        top.addWidget(self.unlabeled_only)
        top.addWidget(QtWidgets.QLabel("labeler:"))
        top.addWidget(self.author_edit)

        self.table = QtWidgets.QTableWidget(0, len(_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(_COLUMNS))
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        # Arrow keys scrub the timeline; episodes change with Ctrl+Up/Down or the mouse.
        self.table.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.itemSelectionChanged.connect(self._on_table_selection)

        self.frames_box = QtWidgets.QWidget()
        self.frames_layout = QtWidgets.QHBoxLayout(self.frames_box)
        self.frames_layout.setContentsMargins(0, 0, 0, 0)
        self.frame_views: dict[str, FrameView] = {}

        self.timeline = TimelineWidget()
        self.timeline.cursorChanged.connect(self._on_cursor)
        self.timeline.labelsEdited.connect(self._after_edit)
        self.timeline.selectionChanged.connect(lambda _: self._update_info())
        self.timeline.placeRequested.connect(lambda step: self.place_reward(step=step))
        timeline_scroll = QtWidgets.QScrollArea()
        timeline_scroll.setWidgetResizable(True)
        timeline_scroll.setWidget(self.timeline)
        timeline_scroll.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)

        controls = QtWidgets.QHBoxLayout()
        self.subtask_combo = QtWidgets.QComboBox()
        self.value_spin = QtWidgets.QDoubleSpinBox()
        self.value_spin.setRange(-100.0, 100.0)
        self.value_spin.setDecimals(2)
        self.value_spin.setValue(1.0)
        self.add_button = QtWidgets.QPushButton("Place reward (R)")
        self.add_button.clicked.connect(lambda: self.place_reward())
        self.delete_button = QtWidgets.QPushButton("Delete (Del)")
        self.delete_button.clicked.connect(self.delete_selected)
        self.undo_button = QtWidgets.QPushButton("Undo")
        self.undo_button.clicked.connect(self.undo)
        self.redo_button = QtWidgets.QPushButton("Redo")
        self.redo_button.clicked.connect(self.redo)
        self.save_button = QtWidgets.QPushButton("Save (Ctrl+S)")
        self.save_button.clicked.connect(self.save)
        for w in (self.subtask_combo, self.value_spin):
            w.setFocusPolicy(QtCore.Qt.FocusPolicy.ClickFocus)
        controls.addWidget(QtWidgets.QLabel("subtask"))
        controls.addWidget(self.subtask_combo)
        controls.addWidget(QtWidgets.QLabel("value"))
        controls.addWidget(self.value_spin)
        for b in (self.add_button, self.delete_button, self.undo_button, self.redo_button, self.save_button):
            b.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
            controls.addWidget(b)
        controls.addStretch(1)
        self.success_box = QtWidgets.QHBoxLayout()
        self.success_checks: dict[str, QtWidgets.QCheckBox] = {}
        self.info_label = QtWidgets.QLabel("open an episode store")
        self.conflict_bar = QtWidgets.QWidget()
        bar = QtWidgets.QHBoxLayout(self.conflict_bar)
        bar.setContentsMargins(4, 2, 4, 2)
        self.conflict_label = QtWidgets.QLabel()
        self.conflict_label.setWordWrap(True)
        self.conflict_label.setStyleSheet("color: #a00000; font-weight: bold")
        reload_button = QtWidgets.QPushButton("Load the newer labels (drop mine)")
        reload_button.clicked.connect(self.resolve_conflict_reload)
        overwrite_button = QtWidgets.QPushButton("Save mine as the newest version")
        overwrite_button.clicked.connect(self.resolve_conflict_keep_mine)
        bar.addWidget(self.conflict_label, 1)
        bar.addWidget(reload_button)
        bar.addWidget(overwrite_button)
        self.conflict_bar.hide()

        right = QtWidgets.QWidget()
        rl = QtWidgets.QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(self.frames_box, 3)
        rl.addWidget(timeline_scroll, 2)
        rl.addLayout(controls)
        rl.addLayout(self.success_box)
        rl.addWidget(self.conflict_bar)
        rl.addWidget(self.info_label)
        self.splitter = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.table)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 5)
        self.splitter.setSizes([430, 1000])
        self.table.setWordWrap(False)
        layout = QtWidgets.QVBoxLayout(page)
        layout.addLayout(top)
        layout.addWidget(self.splitter, 1)

    def _build_live(self) -> None:
        page = self.live_page
        layout = QtWidgets.QVBoxLayout(page)
        head = QtWidgets.QHBoxLayout()
        self.connect_button = QtWidgets.QPushButton("Connect to ROS")
        self.connect_button.clicked.connect(self.connect_live)
        self.live_state = QtWidgets.QLabel("not connected")
        head.addWidget(self.connect_button)
        head.addWidget(self.live_state, 1)
        layout.addLayout(head)
        self.reward_buttons_box = QtWidgets.QHBoxLayout()
        layout.addLayout(self.reward_buttons_box)
        self.reward_buttons: list[QtWidgets.QPushButton] = []
        end_row = QtWidgets.QHBoxLayout()
        self.reason_combo = QtWidgets.QComboBox()
        self.reason_combo.setEditable(True)
        self.reason_combo.addItems(["success", "failure", "drop", "timeout", "operator"])
        self.end_button = QtWidgets.QPushButton("END episode (F10)")
        self.abort_button = QtWidgets.QPushButton("ABORT episode (F12)")
        for b, color in ((self.end_button, "#2e7d32"), (self.abort_button, "#c62828")):
            b.setMinimumHeight(64)
            b.setStyleSheet(f"font-size: 18px; font-weight: bold; color: white; background: {color}")
            b.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        self.end_button.clicked.connect(lambda: self.live_end(abort=False))
        self.abort_button.clicked.connect(lambda: self.live_end(abort=True))
        end_row.addWidget(QtWidgets.QLabel("reason"))
        end_row.addWidget(self.reason_combo)
        end_row.addWidget(self.end_button, 1)
        end_row.addWidget(self.abort_button, 1)
        layout.addLayout(end_row)
        form_box = QtWidgets.QGroupBox("Policy")
        self.status_form = QtWidgets.QFormLayout(form_box)
        self.status_labels: dict[str, QtWidgets.QLabel] = {}
        for label, text in PolicyStatus().lines():
            value = QtWidgets.QLabel(text)
            value.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
            self.status_labels[label] = value
            self.status_form.addRow(label, value)
        layout.addWidget(form_box)
        self.sent_list = QtWidgets.QListWidget()
        self.sent_list.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        layout.addWidget(QtWidgets.QLabel("sent"))
        layout.addWidget(self.sent_list, 1)
        self._rebuild_live_buttons()

    def _build_shortcuts(self) -> None:
        ctx = QtCore.Qt.ShortcutContext.WidgetWithChildrenShortcut

        def bind(page: QtWidgets.QWidget, seq: QtGui.QKeySequence, slot: Callable[[], Any]) -> None:
            sc = QtGui.QShortcut(seq, page)
            sc.setContext(ctx)
            sc.activated.connect(slot)

        off = self.offline_page
        bind(off, _seq(Key.Key_Right), lambda: self.step_cursor(1))
        bind(off, _seq(Key.Key_Left), lambda: self.step_cursor(-1))
        bind(off, _seq(Mod.ShiftModifier, Key.Key_Right), lambda: self.step_seconds(1))
        bind(off, _seq(Mod.ShiftModifier, Key.Key_Left), lambda: self.step_seconds(-1))
        bind(off, _seq(Key.Key_Home), lambda: self.timeline.set_cursor(0))
        bind(off, _seq(Key.Key_End), lambda: self.timeline.set_cursor(10**9))
        for seq in (_seq(Key.Key_PageDown), _seq(Key.Key_Period)):
            bind(off, seq, self.next_event)
        for seq in (_seq(Key.Key_PageUp), _seq(Key.Key_Comma)):
            bind(off, seq, self.previous_event)
        bind(off, _seq(Key.Key_R), lambda: self.place_reward())
        bind(off, _seq(Key.Key_Delete), self.delete_selected)
        bind(off, _seq(Mod.AltModifier, Key.Key_Right), lambda: self.move_selected(1))
        bind(off, _seq(Mod.AltModifier, Key.Key_Left), lambda: self.move_selected(-1))
        bind(off, QtGui.QKeySequence.StandardKey.Undo, self.undo)
        bind(off, _seq(Mod.ControlModifier, Mod.ShiftModifier, Key.Key_Z), self.redo)
        bind(off, _seq(Mod.ControlModifier, Key.Key_Y), self.redo)
        bind(off, _seq(Mod.ControlModifier, Key.Key_S), self.save)
        bind(off, _seq(Mod.ControlModifier, Key.Key_Down), lambda: self.select_relative(1))
        bind(off, _seq(Mod.ControlModifier, Key.Key_Up), lambda: self.select_relative(-1))
        bind(off, _seq(Mod.ControlModifier, Key.Key_U), self.select_next_unlabeled)
        digits = [Key.Key_1, Key.Key_2, Key.Key_3, Key.Key_4, Key.Key_5, Key.Key_6, Key.Key_7, Key.Key_8, Key.Key_9]
        shifted = [Key.Key_Exclam, Key.Key_At, Key.Key_NumberSign, Key.Key_Dollar, Key.Key_Percent,
                   Key.Key_AsciiCircum, Key.Key_Ampersand, Key.Key_Asterisk, Key.Key_ParenLeft]
        for i, key in enumerate(digits):
            bind(off, _seq(key), lambda i=i: self.place_reward(subtask_index=i))
            bind(off, _seq(Mod.ShiftModifier, key), lambda i=i: self.toggle_subtask(i))
            bind(off, _seq(shifted[i]), lambda i=i: self.toggle_subtask(i))  # US layouts send the symbol
        live = self.live_page
        fkeys = [Key.Key_F1, Key.Key_F2, Key.Key_F3, Key.Key_F4, Key.Key_F5, Key.Key_F6, Key.Key_F7, Key.Key_F8]
        for i, key in enumerate(fkeys):
            bind(live, _seq(key), lambda i=i: self._live_reward_hotkey(i))
        bind(live, _seq(Key.Key_F10), lambda: self.live_end(abort=False))
        bind(live, _seq(Key.Key_F12), lambda: self.live_end(abort=True))

    # =========================================================================== offline

    def _browse(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(self, "Episode store or folder of bags")
        if path:
            self.open_location(path)

    def open_location(self, location: str) -> bool:
        """Open a store / bag folder; False (and a message) if it cannot be opened."""
        location = location.strip()
        if not location:
            return False
        try:
            source = EpisodeSource.open(location, progress=self._say)
        except (OSError, ValueError, KeyError) as exc:
            self._say(f"cannot open {location}: {exc}")
            return False
        self.open_source(source)
        self.location_edit.setText(location)
        return True

    def open_source(self, source: EpisodeSource) -> None:
        self.source = source
        self._docs.clear()
        self.subtasks = source.subtasks()
        self.subtask_combo.clear()
        self.subtask_combo.addItem("(none)", "")
        for name in self.subtasks:
            self.subtask_combo.addItem(name, name)
        self.value_spin.setValue(source.settings().default_reward)
        self._rebuild_success_checks()
        self._rebuild_live_buttons()
        self.refresh_rows()
        notes = "; ".join(source.conversion_notes)
        self._say(f"{source.origin}: {len(self.rows)} episodes" + (f" ({notes})" if notes else ""))
        if self.table.rowCount():
            self.table.selectRow(0)

    def refresh_rows(self) -> None:
        if self.source is None:
            return
        self.source.refresh()
        self.rows = self.source.rows()
        self._fill_table()

    def visible_rows(self) -> list[EpisodeRow]:
        if self.unlabeled_only.isChecked():
            return [r for r in self.rows if not r.labeled]
        return list(self.rows)

    def _fill_table(self) -> None:
        current = self.data.episode_id if self.data else None
        rows = self.visible_rows()
        self.table.blockSignals(True)
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            dirty = "*" if r.episode_id in self._docs and self._docs[r.episode_id].dirty else ""
            labels = f"v{r.labels_version} {r.labels_author}" if r.labeled else "unlabeled"
            cells = (r.episode_id + dirty, r.source, r.operator, str(r.length), labels,
                     f"{r.total_reward:g}", r.success_text())
            for j, text in enumerate(cells):
                item = QtWidgets.QTableWidgetItem(text)
                item.setData(QtCore.Qt.ItemDataRole.UserRole, r.episode_id)
                if not r.labeled:
                    item.setForeground(QtGui.QColor("#a06000"))
                self.table.setItem(i, j, item)
            if r.episode_id == current:
                self.table.selectRow(i)
        self.table.resizeColumnsToContents()
        self.table.blockSignals(False)

    def _on_table_selection(self) -> None:
        items = self.table.selectedItems()
        if items:
            self.open_episode(items[0].data(QtCore.Qt.ItemDataRole.UserRole))

    def current_row_index(self) -> int:
        if self.data is None:
            return -1
        for i, r in enumerate(self.visible_rows()):
            if r.episode_id == self.data.episode_id:
                return i
        return -1

    def select_relative(self, delta: int) -> None:
        n = self.table.rowCount()
        if n:
            self.table.selectRow(min(max(self.current_row_index() + delta, 0), n - 1))

    def select_next_unlabeled(self) -> None:
        rows = self.visible_rows()
        start = self.current_row_index()
        for k in range(1, len(rows) + 1):
            i = (start + k) % len(rows)
            if not rows[i].labeled:
                self.table.selectRow(i)
                return
        self._say("every episode has labels")

    def open_episode(self, episode_id: str) -> None:
        assert self.source is not None
        if self.data is not None and self.data.episode_id == episode_id:
            return
        data = self.source.episode(episode_id)
        doc = self._docs.get(episode_id)
        if doc is None or (not doc.dirty and doc.base_version != (data.labels.version if data.labels else 0)):
            doc = LabelDocument(
                episode_id, data.length, self.subtasks, base=data.labels,
                recorded_rewards=data.steps["reward"],
                recorded_subtask_success=data.metadata.get("subtask_success", {}),
            )
            self._docs[episode_id] = doc
        self.data, self.doc = data, doc
        self.conflict = None
        self.conflict_bar.hide()
        for view in self.frame_views.values():
            view.setParent(None)
            view.deleteLater()
        self.frame_views = {}
        for key in data.camera_keys:
            view = FrameView(key)
            self.frames_layout.addWidget(view)
            self.frame_views[key] = view
        self.timeline.set_episode(data, doc, self.subtasks)
        self._on_cursor(0)
        self._sync_success_checks()
        self._update_info()
        self.timeline.setFocus()

    # ------------------------------------------------------------------ cursor & events

    @property
    def cursor(self) -> int:
        return self.timeline.cursor

    def step_cursor(self, frames: int) -> None:
        self.timeline.set_cursor(self.timeline.cursor + frames)

    def step_seconds(self, seconds: int) -> None:
        if self.data is not None:
            self.step_cursor(round(seconds * self.data.control_rate_hz))

    def next_event(self) -> None:
        if self.doc is not None:
            step = next_event_step(self.doc.events, self.cursor)
            if step is not None:
                self.timeline.set_cursor(step)
                self.timeline.select(self.doc.event_at(step))

    def previous_event(self) -> None:
        if self.doc is not None:
            step = previous_event_step(self.doc.events, self.cursor)
            if step is not None:
                self.timeline.set_cursor(step)
                self.timeline.select(self.doc.event_at(step))

    def place_reward(self, step: int | None = None, subtask_index: int | None = None) -> None:
        if self.doc is None:
            return
        if subtask_index is not None:
            if subtask_index >= len(self.subtasks):
                self._say(f"no subtask {subtask_index + 1} (subtasks: {', '.join(self.subtasks) or 'none'})")
                return
            subtask = self.subtasks[subtask_index]
            self.subtask_combo.setCurrentIndex(subtask_index + 1)
        else:
            subtask = self.subtask_combo.currentData() or ""
        index = self.doc.add_event(self.cursor if step is None else step, self.value_spin.value(), subtask)
        self.timeline.select(index)
        self._after_edit()

    def delete_selected(self) -> None:
        if self.doc is None:
            return
        # The event under the cursor first (what the person looks at), else the selected one.
        index = self.doc.event_at(self.cursor)
        if index is None:
            index = self.timeline.selected
        if index is None or index >= len(self.doc.events):
            self._say("no reward event selected (click one, or put the cursor on it)")
            return
        self.doc.remove_event(index)
        self.timeline.select(None)
        self._after_edit()

    def move_selected(self, frames: int) -> None:
        if self.doc is None or self.timeline.selected is None:
            return
        event = self.doc.events[self.timeline.selected]
        index = self.doc.move_event(self.timeline.selected, event.step + frames)
        self.timeline.select(index)
        self.timeline.set_cursor(self.doc.events[index].step)
        self._after_edit()

    def toggle_subtask(self, index: int) -> None:
        if self.doc is None or index >= len(self.subtasks):
            return
        name = self.subtasks[index]
        self.doc.set_subtask_success(name, not self.doc.subtask_success.get(name, False))
        self._after_edit()

    def undo(self) -> None:
        if self.doc is not None and self.doc.undo():
            self.timeline.select(None)
            self._after_edit()

    def redo(self) -> None:
        if self.doc is not None and self.doc.redo():
            self.timeline.select(None)
            self._after_edit()

    # ------------------------------------------------------------------------- saving

    def save(self) -> bool:
        """Save the open episode's labels as a new version; False on a conflict or error."""
        if self.doc is None or self.source is None:
            return False
        try:
            saved = self.doc.save(self.source.labels, author=self.author_edit.text().strip() or None)
        except LabelConflictError as exc:
            self.conflict = exc
            self.conflict_label.setText(str(exc))
            self.conflict_bar.show()
            self._say(f"not saved: {exc}")
            return False
        except (OSError, ValueError) as exc:
            self._say(f"not saved: {exc}")
            return False
        self.conflict = None
        self.conflict_bar.hide()
        self._say(f"saved {saved.episode_id} labels v{saved.version} ({len(saved.events)} events, "
                  f"reward {saved.total_reward:g})")
        self.refresh_rows()
        self._update_info()
        return True

    def resolve_conflict_reload(self) -> None:
        """Drop this window's edits and show the newest labels."""
        if self.data is None or self.source is None:
            return
        episode_id = self.data.episode_id
        self._docs.pop(episode_id, None)
        self.data = None
        self.open_episode(episode_id)
        self.refresh_rows()

    def resolve_conflict_keep_mine(self) -> bool:
        """Save this window's edits as a version after the newer one (which stays in the history)."""
        if self.doc is None or self.source is None:
            return False
        newest = self.source.labels.newest(self.doc.episode_id)
        if newest is not None:
            self.doc.rebase(newest)
        return self.save()

    # ------------------------------------------------------------------------- display

    def _after_edit(self) -> None:
        self._sync_success_checks()
        self.timeline.update()
        self._update_info()
        self._mark_dirty_row()

    def _mark_dirty_row(self) -> None:
        if self.data is None:
            return
        i = self.current_row_index()
        if i >= 0 and self.table.item(i, 0) is not None:
            star = "*" if self.doc is not None and self.doc.dirty else ""
            self.table.item(i, 0).setText(self.data.episode_id + star)

    def _on_cursor(self, step: int) -> None:
        if self.data is None:
            return
        for key, view in self.frame_views.items():
            view.set_frame(self.data.steps[key][step])
        self._update_info()

    def _update_info(self) -> None:
        if self.data is None or self.doc is None:
            return
        rate = self.data.control_rate_hz
        selected = ""
        if self.timeline.selected is not None and self.timeline.selected < len(self.doc.events):
            e = self.doc.events[self.timeline.selected]
            selected = f" | selected: {e.value:+g} {e.subtask or '(no subtask)'} at step {e.step}"
        state = "unsaved changes" if self.doc.dirty else f"saved as v{self.doc.base_version}"
        self.info_label.setText(
            f"{self.data.episode_id}: step {self.cursor}/{self.data.length - 1} "
            f"({self.cursor / rate:.1f} s) | {len(self.doc.events)} reward events, "
            f"return {float(self.doc.rewards().sum()):g} | {state}{selected}")
        self.undo_button.setEnabled(self.doc.can_undo)
        self.redo_button.setEnabled(self.doc.can_redo)

    def _rebuild_success_checks(self) -> None:
        while self.success_box.count():
            item = self.success_box.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self.success_checks = {}
        self.success_box.addWidget(QtWidgets.QLabel("success:"))
        for i, name in enumerate(self.subtasks):
            box = QtWidgets.QCheckBox(f"{name} (Shift+{i + 1})" if i < 9 else name)
            box.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
            color = subtask_color(name, self.subtasks).name()
            box.setStyleSheet(f"QCheckBox {{ color: {color}; font-weight: bold }}")
            box.clicked.connect(lambda checked, name=name: self._on_success_clicked(name, checked))
            self.success_box.addWidget(box)
            self.success_checks[name] = box
        self.success_box.addStretch(1)

    def _on_success_clicked(self, name: str, checked: bool) -> None:
        if self.doc is not None:
            self.doc.set_subtask_success(name, checked)
            self._after_edit()

    def _sync_success_checks(self) -> None:
        if self.doc is None:
            return
        success = self.doc.subtask_success
        for name, box in self.success_checks.items():
            box.setChecked(success.get(name, False))

    def _say(self, text: str) -> None:
        if self.data is None:
            self.info_label.setText(text)
        self.statusMessage.emit(text)
        self.last_message = text

    # ============================================================================== live

    def _rebuild_live_buttons(self) -> None:
        while self.reward_buttons_box.count():
            item = self.reward_buttons_box.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self.reward_buttons = []
        value = self.value_spin.value() if hasattr(self, "value_spin") else 1.0
        targets = list(self.subtasks[:8]) or [""]
        for i, name in enumerate(targets):
            text = f"{value:+g}  {name or 'reward'}\n(F{i + 1})"
            button = QtWidgets.QPushButton(text)
            button.setMinimumHeight(96)
            color = subtask_color(name, self.subtasks).name()
            button.setStyleSheet(f"font-size: 22px; font-weight: bold; color: white; background: {color}")
            button.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
            button.clicked.connect(lambda _=False, name=name: self.live_reward(name))
            self.reward_buttons_box.addWidget(button)
            self.reward_buttons.append(button)

    def set_subtasks(self, subtasks: tuple[str, ...]) -> None:
        """Subtasks for the live buttons when no store is open (e.g. from the command line)."""
        self.subtasks = tuple(subtasks)
        self._rebuild_live_buttons()
        self._rebuild_success_checks()

    def connect_live(self) -> bool:
        if self.live_link is not None:
            return True
        if self._live_link_factory is None:
            self.live_state.setText("ROS 2 is not available here (rclpy / sernf_interfaces not importable)")
            return False
        try:
            self.live_link = self._live_link_factory()
        except Exception as exc:  # noqa: BLE001 - any failure to start ROS is shown, not raised
            self.live_state.setText(f"cannot start ROS: {exc}")
            return False
        self.live_state.setText(f"connected as {self.live_link.fully_qualified_name}")
        self.connect_button.setEnabled(False)
        self._live_timer.start()
        return True

    def _live_reward_hotkey(self, index: int) -> None:
        targets = list(self.subtasks[:8]) or [""]
        if index < len(targets):
            self.live_reward(targets[index])

    def live_reward(self, subtask: str) -> bool:
        if not self.connect_live():
            return False
        reward = OperatorReward(self.value_spin.value(), subtask)
        self.live_link.send_reward(reward)
        self._log_sent(f"reward {reward.value:+g} {subtask or '(no subtask)'}")
        return True

    def live_end(self, abort: bool) -> bool:
        if not self.connect_live():
            return False
        status = self.live_link.latest_status()
        end = EpisodeEnd(abort=abort, reason=self.reason_combo.currentText().strip() or "operator",
                         episode_id=status.episode_id if status else "")
        self.live_link.end_episode(end)
        self._log_sent(f"{'ABORT' if abort else 'END'} {end.episode_id or '(running episode)'}: {end.reason}")
        return True

    def _log_sent(self, text: str) -> None:
        stamp = QtCore.QTime.currentTime().toString("HH:mm:ss.zzz")
        self.sent_log.append(text)
        self.sent_list.insertItem(0, f"{stamp}  {text}")

    def _poll_live(self) -> None:
        if self.live_link is None:
            return
        error = self.live_link.error
        text, current = link_state(self.live_link.fully_qualified_name, self.live_link.status_age_s(), error)
        if text != self.live_state.text():
            self.live_state.setText(text)
            self.live_state.setStyleSheet("" if current else "color: #c62828; font-weight: bold")
        if error:  # the ROS thread is gone: free the node so "Connect to ROS" can start a new one
            self._live_timer.stop()
            self.live_link.close()
            self.live_link = None
            self.connect_button.setEnabled(True)
            return
        status = self.live_link.latest_status()
        if status is None:
            return
        for label, text in status.lines():
            if label not in self.status_labels:
                value = QtWidgets.QLabel()
                self.status_labels[label] = value
                self.status_form.addRow(label, value)
            self.status_labels[label].setText(text)

    # ========================================================================== settings

    def settings_dict(self) -> dict[str, Any]:
        """What the plugin / window keeps between sessions (plain values)."""
        return {
            "location": self.location_edit.text(),
            "only_unlabeled": bool(self.unlabeled_only.isChecked()),
            "author": self.author_edit.text(),
            "tab": int(self.tabs.currentIndex()),
            "reward_value": float(self.value_spin.value()),
            "end_reason": self.reason_combo.currentText(),
            "episode": self.data.episode_id if self.data else "",
        }

    def apply_settings(self, values: dict[str, Any]) -> None:
        def get(key: str, default: Any) -> Any:
            value = values.get(key)
            return default if value in (None, "") else value

        self.unlabeled_only.setChecked(str(get("only_unlabeled", False)).lower() in ("true", "1"))
        self.author_edit.setText(str(get("author", self.author_edit.text())))
        self.reason_combo.setCurrentText(str(get("end_reason", "success")))
        location = str(get("location", ""))
        if location:
            self.open_location(location)
        try:
            self.value_spin.setValue(float(get("reward_value", self.value_spin.value())))
            self.tabs.setCurrentIndex(int(get("tab", 0)))
        except (TypeError, ValueError):
            self._say("ignored unreadable saved settings")
        episode = str(get("episode", ""))
        if episode and self.source is not None and episode in self.source.store.episode_ids():
            for i, r in enumerate(self.visible_rows()):
                if r.episode_id == episode:
                    self.table.selectRow(i)

    def shutdown(self) -> None:
        self._live_timer.stop()
        if self.live_link is not None:
            self.live_link.close()
            self.live_link = None

    def unsaved_episodes(self) -> list[str]:
        return [eid for eid, doc in self._docs.items() if doc.dirty]
