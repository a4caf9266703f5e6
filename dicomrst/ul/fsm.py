# -*- test-case-name: tests.unit.test_ul_fsm -*-
"""The Upper Layer state machine of PS3.8 §9.2 as data.

`TRANSITIONS` is Table 9-10 laid out as the standard prints it: one row per event,
one column per state Sta1..Sta13.  The protocol looks up the action for (event,
state) here and runs its method of the same name; an empty cell means the event
cannot happen in that state, which for a local event is our bug and for a PDU is
handled by the Evt19 row.  tests/unit/test_ul_fsm.py pins this table to pynetdicom's.
"""

from __future__ import annotations

STATES = {
    "Sta1": "Idle",
    "Sta2": "Transport connection open (awaiting A-ASSOCIATE-RQ PDU)",
    "Sta3": "Awaiting local A-ASSOCIATE response primitive",
    "Sta4": "Awaiting transport connection opening to complete",
    "Sta5": "Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU",
    "Sta6": "Association established and ready for data transfer",
    "Sta7": "Awaiting A-RELEASE-RP PDU",
    "Sta8": "Awaiting local A-RELEASE response primitive",
    "Sta9": "Release collision requestor side; awaiting A-RELEASE response",
    "Sta10": "Release collision acceptor side; awaiting A-RELEASE-RP PDU",
    "Sta11": "Release collision requestor side; awaiting A-RELEASE-RP PDU",
    "Sta12": "Release collision acceptor side; awaiting A-RELEASE response primitive",
    "Sta13": "Awaiting transport connection close indication",
}

EVENTS = {
    "Evt1": "A-ASSOCIATE request (local user)",
    "Evt2": "Transport connect confirmation (local transport service)",
    "Evt3": "A-ASSOCIATE-AC PDU (received on transport connection)",
    "Evt4": "A-ASSOCIATE-RJ PDU (received on transport connection)",
    "Evt5": "Transport connection indication (local transport service)",
    "Evt6": "A-ASSOCIATE-RQ PDU (received on transport connection)",
    "Evt7": "A-ASSOCIATE response primitive (accept)",
    "Evt8": "A-ASSOCIATE response primitive (reject)",
    "Evt9": "P-DATA request primitive",
    "Evt10": "P-DATA-TF PDU",
    "Evt11": "A-RELEASE request primitive",
    "Evt12": "A-RELEASE-RQ PDU (received on open transport connection)",
    "Evt13": "A-RELEASE-RP PDU (received on transport connection)",
    "Evt14": "A-RELEASE response primitive",
    "Evt15": "A-ABORT request primitive",
    "Evt16": "A-ABORT PDU (received on open transport connection)",
    "Evt17": "Transport connection closed indication (local transport service)",
    "Evt18": "ARTIM timer expired (Association reject/release timer)",
    "Evt19": "Unrecognized or invalid PDU received",
}

_ = ""
# fmt: off
_ROWS: dict[str, tuple[str, ...]] = {
    #         Sta1    Sta2    Sta3    Sta4    Sta5    Sta6    Sta7    Sta8    Sta9    Sta10    Sta11   Sta12   Sta13
    "Evt1":  ("AE-1", _,      _,      _,      _,      _,      _,      _,      _,      _,       _,      _,      _),
    "Evt2":  (_,      _,      _,      "AE-2", _,      _,      _,      _,      _,      _,       _,      _,      _),
    "Evt3":  (_,      "AA-1", "AA-8", _,      "AE-3", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8",  "AA-8", "AA-8", "AA-6"),
    "Evt4":  (_,      "AA-1", "AA-8", _,      "AE-4", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8",  "AA-8", "AA-8", "AA-6"),
    "Evt5":  ("AE-5", _,      _,      _,      _,      _,      _,      _,      _,      _,       _,      _,      _),
    "Evt6":  (_,      "AE-6", "AA-8", _,      "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8",  "AA-8", "AA-8", "AA-7"),
    "Evt7":  (_,      _,      "AE-7", _,      _,      _,      _,      _,      _,      _,       _,      _,      _),
    "Evt8":  (_,      _,      "AE-8", _,      _,      _,      _,      _,      _,      _,       _,      _,      _),
    "Evt9":  (_,      _,      _,      _,      _,      "DT-1", _,      "AR-7", _,      _,       _,      _,      _),
    "Evt10": (_,      "AA-1", "AA-8", _,      "AA-8", "DT-2", "AR-6", "AA-8", "AA-8", "AA-8",  "AA-8", "AA-8", "AA-6"),
    "Evt11": (_,      _,      _,      _,      _,      "AR-1", _,      _,      _,      _,       _,      _,      _),
    "Evt12": (_,      "AA-1", "AA-8", _,      "AA-8", "AR-2", "AR-8", "AA-8", "AA-8", "AA-8",  "AA-8", "AA-8", "AA-6"),
    "Evt13": (_,      "AA-1", "AA-8", _,      "AA-8", "AA-8", "AR-3", "AA-8", "AA-8", "AR-10", "AR-3", "AA-8", "AA-6"),
    "Evt14": (_,      _,      _,      _,      _,      _,      _,      "AR-4", "AR-9", _,       _,      "AR-4", _),
    "Evt15": (_,      _,      "AA-1", "AA-2", "AA-1", "AA-1", "AA-1", "AA-1", "AA-1", "AA-1",  "AA-1", "AA-1", _),
    "Evt16": (_,      "AA-2", "AA-3", _,      "AA-3", "AA-3", "AA-3", "AA-3", "AA-3", "AA-3",  "AA-3", "AA-3", "AA-2"),
    "Evt17": (_,      "AA-5", "AA-4", "AA-4", "AA-4", "AA-4", "AA-4", "AA-4", "AA-4", "AA-4",  "AA-4", "AA-4", "AR-5"),
    "Evt18": (_,      "AA-2", _,      _,      _,      _,      _,      _,      _,      _,       _,      _,      "AA-2"),
    "Evt19": (_,      "AA-1", "AA-8", _,      "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8",  "AA-8", "AA-8", "AA-7"),
}
# fmt: on

TRANSITIONS: dict[tuple[str, str], str] = {
    (event, f"Sta{i + 1}"): action for event, row in _ROWS.items() for i, action in enumerate(row) if action
}

# The PDU type that raises each receive event.
PDU_EVENTS = {
    0x01: "Evt6",
    0x02: "Evt3",
    0x03: "Evt4",
    0x04: "Evt10",
    0x05: "Evt12",
    0x06: "Evt13",
    0x07: "Evt16",
}


def action_for(event: str, state: str) -> str | None:
    return TRANSITIONS.get((event, state))


#: The protocol's method carrying out each transition's action ("AE-6" -> "_AE_6"), named
#: once here rather than for every PDU.
METHODS: dict[tuple[str, str], str] = {
    key: "_" + action.replace("-", "_") for key, action in TRANSITIONS.items()
}


# The state each action leads to (PS3.8 Tables 9-6 to 9-9): AE-6 to Sta3 when the
# request is acceptable to the provider, else Sta13; AR-8 to Sta9 for the requestor,
# Sta10 for the acceptor.  Only the diagram uses it: the actions set the state themselves.
NEXT_STATES: dict[str, tuple[str, ...]] = {
    "AE-1": ("Sta4",), "AE-2": ("Sta5",), "AE-3": ("Sta6",), "AE-4": ("Sta1",), "AE-5": ("Sta2",),
    "AE-6": ("Sta3", "Sta13"), "AE-7": ("Sta6",), "AE-8": ("Sta13",),
    "DT-1": ("Sta6",), "DT-2": ("Sta6",),
    "AR-1": ("Sta7",), "AR-2": ("Sta8",), "AR-3": ("Sta1",), "AR-4": ("Sta13",), "AR-5": ("Sta1",),
    "AR-6": ("Sta7",), "AR-7": ("Sta8",), "AR-8": ("Sta9", "Sta10"), "AR-9": ("Sta11",), "AR-10": ("Sta12",),
    "AA-1": ("Sta13",), "AA-2": ("Sta1",), "AA-3": ("Sta1",), "AA-4": ("Sta1",), "AA-5": ("Sta1",),
    "AA-6": ("Sta13",), "AA-7": ("Sta13",), "AA-8": ("Sta13",),
}  # fmt: skip


def dot() -> str:
    """Table 9-10 as a Graphviz digraph: an edge per (state, event), labelled event / action."""
    lines = [
        "// ul-ps3.8: generated from dicomrst.ul.fsm by python -m dicomrst.diagrams.",
        'digraph "ul-ps3.8" {',
        "  rankdir=LR;",
        '  node [shape=box, style=rounded, fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=8];',
    ]
    for state, meaning in STATES.items():
        lines.append(f'  "{state}" [label="{state}\\n{meaning}"];')
    for (event, state), action in TRANSITIONS.items():
        for target in NEXT_STATES[action]:
            lines.append(f'  "{state}" -> "{target}" [label="{event} / {action}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"
