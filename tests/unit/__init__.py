"""Tests that use memory transports and clocks only: no subprocess, socket or real time."""
