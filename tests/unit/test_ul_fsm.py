"""The PS3.8 Table 9-10 transcription (dicomrst.ul.fsm) against pynetdicom's."""

from __future__ import annotations

from pynetdicom import dul as pynetdicom_dul
from pynetdicom import fsm as pynetdicom_fsm
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.ul import fsm
from dicomrst.ul.protocol import ULProtocol


class TransitionTableTests(SynchronousTestCase):
    def test_same_cells_as_pynetdicom(self) -> None:
        ours = fsm.TRANSITIONS
        theirs = pynetdicom_fsm.TRANSITION_TABLE
        missing = {key: theirs[key] for key in theirs.keys() - ours.keys()}
        extra = {key: ours[key] for key in ours.keys() - theirs.keys()}
        self.assertEqual(missing, {}, "cells pynetdicom has and we lack")
        self.assertEqual(extra, {}, "cells we have and pynetdicom lacks")
        differing = {key: (ours[key], theirs[key]) for key in ours if ours[key] != theirs[key]}
        self.assertEqual(differing, {})
        self.assertEqual(ours, theirs)

    def test_states_and_events_are_the_standard_ones(self) -> None:
        self.assertEqual(set(fsm.STATES), set(pynetdicom_fsm.STATES))
        self.assertEqual(set(fsm.EVENTS), {f"Evt{i}" for i in range(1, 20)})
        for event, state in fsm.TRANSITIONS:
            self.assertIn(event, fsm.EVENTS)
            self.assertIn(state, fsm.STATES)

    def test_every_action_in_the_table_is_a_protocol_method(self) -> None:
        actions = set(fsm.TRANSITIONS.values())
        self.assertEqual(actions, set(pynetdicom_fsm.ACTIONS))
        for action in actions:
            method = getattr(ULProtocol, "_" + action.replace("-", "_"), None)
            self.assertTrue(callable(method), f"ULProtocol lacks the method for {action}")

    def test_pdu_types_raise_the_same_events_as_in_pynetdicom(self) -> None:
        theirs = {key[0]: event for key, (_, event) in pynetdicom_dul._PDU_TYPES.items()}
        self.assertEqual(fsm.PDU_EVENTS, theirs)

    def test_action_for(self) -> None:
        self.assertEqual(fsm.action_for("Evt6", "Sta2"), "AE-6")
        self.assertEqual(fsm.action_for("Evt12", "Sta7"), "AR-8")
        self.assertIsNone(fsm.action_for("Evt15", "Sta13"))
        self.assertIsNone(fsm.action_for("Evt1", "Sta6"))
