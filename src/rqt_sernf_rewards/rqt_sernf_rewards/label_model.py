"""Editing one episode's reward labels: events, subtask success, undo/redo, saving as a new
label set version, and the cursor arithmetic of keyboard scrubbing. Pure Python (no Qt).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from sernf_data.labels import LabelSet, LabelStore, RewardEvent

from . import TOOL_NAME

__all__ = ["LabelDocument", "clamp_step", "next_event_step", "previous_event_step"]


@dataclass(frozen=True)
class _State:
    events: tuple[RewardEvent, ...]
    subtask_success: tuple[tuple[str, bool], ...]


@dataclass
class LabelDocument:
    """The labels of one episode as a person edits them.

    Starts from the newest label set (``base``) or, for an episode never labeled, from the
    recorded rewards (each non-zero step becomes an event without subtask). Every edit is
    undoable; ``save`` publishes a new version whose parent is ``base_version``.
    """

    episode_id: str
    length: int
    subtasks: tuple[str, ...] = ()
    base: LabelSet | None = None
    recorded_rewards: np.ndarray | None = None
    recorded_subtask_success: Mapping[str, bool] = field(default_factory=dict)
    _undo: list[_State] = field(default_factory=list, init=False, repr=False)
    _redo: list[_State] = field(default_factory=list, init=False, repr=False)
    _saved: _State | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ValueError(f"episode {self.episode_id!r} has no steps")
        if self.base is not None:
            events = self.base.events
            success = dict(self.base.subtask_success)
        else:
            rewards = np.zeros(0) if self.recorded_rewards is None else np.asarray(self.recorded_rewards)
            events = tuple(RewardEvent(int(i), float(rewards[i])) for i in np.flatnonzero(rewards))
            success = dict(self.recorded_subtask_success)
        for name in self.subtasks:
            success.setdefault(name, False)
        self._state = _State(tuple(sorted(events, key=_order)), tuple(sorted(success.items())))
        # An unlabeled episode is "dirty" from the start: saving it records the first label set.
        self._saved = self._state if self.base is not None else None

    # ------------------------------------------------------------------------- reading

    @property
    def events(self) -> tuple[RewardEvent, ...]:
        return self._state.events

    @property
    def subtask_success(self) -> dict[str, bool]:
        return dict(self._state.subtask_success)

    @property
    def base_version(self) -> int:
        return self.base.version if self.base is not None else 0

    @property
    def dirty(self) -> bool:
        return self._state != self._saved

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def rewards(self) -> np.ndarray:
        """``[L]`` float32 rewards these labels give."""
        out = np.zeros(self.length, dtype=np.float32)
        for e in self.events:
            out[e.step] += e.value
        return out

    def event_at(self, step: int) -> int | None:
        """Index of the first event at ``step``, else None."""
        for i, e in enumerate(self.events):
            if e.step == step:
                return i
        return None

    def nearest_event(self, step: int, max_distance: int) -> int | None:
        """Index of the event closest to ``step`` within ``max_distance`` steps."""
        best, best_d = None, max_distance + 1
        for i, e in enumerate(self.events):
            d = abs(e.step - step)
            if d < best_d:
                best, best_d = i, d
        return best

    # ------------------------------------------------------------------------- editing

    def add_event(self, step: int, value: float, subtask: str = "") -> int:
        """Place a reward at ``step``; returns the new event's index."""
        event = RewardEvent(clamp_step(step, self.length), value, subtask)
        events = tuple(sorted((*self.events, event), key=_order))
        self._apply(_State(events, self._state.subtask_success))
        return events.index(event)

    def move_event(self, index: int, step: int) -> int:
        """Move event ``index`` to ``step`` (clamped to the episode); returns its new index."""
        old = self.events[index]
        moved = RewardEvent(clamp_step(step, self.length), old.value, old.subtask)
        if moved == old:
            return index
        rest = self.events[:index] + self.events[index + 1:]
        events = tuple(sorted((*rest, moved), key=_order))
        self._apply(_State(events, self._state.subtask_success))
        return events.index(moved)

    def set_event(self, index: int, value: float | None = None, subtask: str | None = None) -> None:
        old = self.events[index]
        new = RewardEvent(old.step, old.value if value is None else value, old.subtask if subtask is None else subtask)
        if new != old:
            events = tuple(sorted((*self.events[:index], new, *self.events[index + 1:]), key=_order))
            self._apply(_State(events, self._state.subtask_success))

    def remove_event(self, index: int) -> RewardEvent:
        removed = self.events[index]
        self._apply(_State(self.events[:index] + self.events[index + 1:], self._state.subtask_success))
        return removed

    def set_subtask_success(self, name: str, done: bool) -> None:
        success = self.subtask_success
        if success.get(name) == bool(done):
            return
        success[name] = bool(done)
        self._apply(_State(self.events, tuple(sorted(success.items()))))

    def undo(self) -> bool:
        if not self._undo:
            return False
        self._redo.append(self._state)
        self._state = self._undo.pop()
        return True

    def redo(self) -> bool:
        if not self._redo:
            return False
        self._undo.append(self._state)
        self._state = self._redo.pop()
        return True

    # -------------------------------------------------------------------------- saving

    def save(self, labels: LabelStore, author: str | None = None, note: str = "") -> LabelSet:
        """Publish these labels as a new version edited from ``base_version``.

        Raises ``sernf_data.labels.LabelConflictError`` (document unchanged, edits kept) if
        someone saved a newer version meanwhile; ``rebase`` then lets the person decide.
        """
        saved = labels.save(
            self.episode_id, self.events, self.subtask_success, parent_version=self.base_version,
            author=author, tool=TOOL_NAME, note=note, episode_length=self.length,
        )
        self.base = saved
        self._saved = self._state
        return saved

    def rebase(self, newest: LabelSet) -> None:
        """Keep the current edits but make ``newest`` their parent (after a conflict, when the
        person chose to save their version over it; the other version stays in the history)."""
        self.base = newest

    def _apply(self, state: _State) -> None:
        if state == self._state:
            return
        self._undo.append(self._state)
        self._redo.clear()
        self._state = state


def _order(e: RewardEvent) -> tuple[int, str, float]:
    return (e.step, e.subtask, e.value)


def clamp_step(step: int, length: int) -> int:
    return int(min(max(int(step), 0), length - 1))


def next_event_step(events: Sequence[RewardEvent], step: int) -> int | None:
    """Step of the first event after ``step`` (None if none)."""
    later = [e.step for e in events if e.step > step]
    return min(later) if later else None


def previous_event_step(events: Sequence[RewardEvent], step: int) -> int | None:
    """Step of the last event before ``step`` (None if none)."""
    earlier = [e.step for e in events if e.step < step]
    return max(earlier) if earlier else None
