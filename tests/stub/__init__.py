"""Tests of the SeaTable stand-in (tests/seatable_stub), over real HTTP."""
