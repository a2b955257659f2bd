"""Shared fixtures for the sagakit test suite."""
