"""Simulated tasks, scripted experts, error injection and the error-recovery scene database."""
