# -*- test-case-name: tests.unit.test_machines -*-
"""Explicit state machines: states, events and transitions as data, as `dicomrst.ul.fsm`
does for PS3.8.

A `Machine` is a table: for each (state, event) the state it leads to and the name of the
owner's method that carries it out.  An owner (a DIMSE operation, a response throttle, an
HTTP request) keeps a `Run` and feeds it events; an event the table does not list for the
current state is a bug of ours, raised as `InvalidTransition` rather than acted on.  The
same table draws the diagram in ``docs/state-machines/`` (`Machine.dot`, written by
``python -m dicomrst.diagrams``), so the picture cannot drift from the code: a test
compares them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs


class InvalidTransition(RuntimeError):
    """An event arrived in a state that does not expect it."""


@attrs.frozen
class Transition:
    """In `source`, `event` leads to `target`, carried out by the owner's method `action`."""

    source: str
    event: str
    target: str
    action: str | None = None


@attrs.frozen
class Machine:
    """A state machine as data.

    :ivar states: every state with a line saying what it means.
    :ivar events: every event with a line saying where it comes from.
    """

    name: str
    initial: str
    states: Mapping[str, str]
    events: Mapping[str, str]
    transitions: tuple[Transition, ...]
    _table: dict[tuple[str, str], Transition] = attrs.field(init=False, repr=False, eq=False)
    _terminal: frozenset[str] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        table: dict[tuple[str, str], Transition] = {}
        if self.initial not in self.states:
            raise ValueError(f"{self.name}: initial state {self.initial!r} is not a state")
        for t in self.transitions:
            if t.source not in self.states or t.target not in self.states:
                raise ValueError(f"{self.name}: {t} names an unknown state")
            if t.event not in self.events:
                raise ValueError(f"{self.name}: {t} names an unknown event")
            if (t.source, t.event) in table:
                raise ValueError(f"{self.name}: two transitions for {t.event} in {t.source}")
            table[(t.source, t.event)] = t
        object.__setattr__(self, "_table", table)
        object.__setattr__(self, "_terminal", frozenset(self.states) - {t.source for t in self.transitions})

    @property
    def terminal(self) -> frozenset[str]:
        """The states no event leaves."""
        return self._terminal

    @property
    def table(self) -> Mapping[tuple[str, str], Transition]:
        """Each (state, event) the machine knows, with its transition."""
        return self._table

    def transition(self, state: str, event: str) -> Transition:
        try:
            return self._table[(state, event)]
        except KeyError:
            raise InvalidTransition(f"{self.name}: {event} is not possible in {state}") from None

    def actions(self) -> set[str]:
        return {t.action for t in self.transitions if t.action is not None}

    def dot(self) -> str:
        """The machine as a Graphviz digraph (``dot -Tsvg``)."""
        lines = [
            f"// {self.name}: generated from its transition table by python -m dicomrst.diagrams.",
            f'digraph "{self.name}" {{',
            "  rankdir=LR;",
            '  node [shape=box, style=rounded, fontname="Helvetica", fontsize=10];',
            '  edge [fontname="Helvetica", fontsize=9];',
            '  "start" [shape=point];',
            f'  "start" -> "{self.initial}";',
        ]
        for state, meaning in self.states.items():
            lines.append(f'  "{state}" [label="{state}\\n{_wrap(meaning)}"];')
        for t in self.transitions:
            label = t.event + (f" /\\n{t.action}" if t.action else "")
            lines.append(f'  "{t.source}" -> "{t.target}" [label="{label}"];')
        lines.append("}")
        return "\n".join(lines) + "\n"


def transitions(rows: Iterable[tuple[str, str, str, str | None]]) -> tuple[Transition, ...]:
    """(source, event, target, action) rows as transitions."""
    return tuple(Transition(*row) for row in rows)


def _wrap(text: str, width: int = 28) -> str:
    words, lines, line = text.replace('"', "'").split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "\\n".join(lines)


class Run:
    """One owner's position in a machine.

    `fire` moves to the transition's target first and then calls the action, so an action
    may itself fire the next event (the state it sees is its transition's target).  Once
    the run is in a terminal state it lets go of its owner: the owner holds the run, and
    that cycle would otherwise keep both (and all the owner holds: a search's query,
    identifier and results) for the cyclic collector, once per DIMSE operation.
    """

    def __init__(self, machine: Machine, owner: object) -> None:
        self.machine = machine
        self.owner: object | None = owner
        self.state = machine.initial
        self._table = machine.table
        self._terminal = machine.terminal

    def fire(self, event: str, *args: object, **kwargs: object) -> None:
        # The table is read here rather than through `Machine.transition`: a DIMSE
        # operation fires an event per response.
        t = self._table.get((self.state, event))
        if t is None:
            t = self.machine.transition(self.state, event)  # raises InvalidTransition
        self.state = t.target
        if t.action is not None:
            getattr(self.owner, t.action)(*args, **kwargs)
        if self.state in self._terminal:
            self.owner = None
