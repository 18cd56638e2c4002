"""The Policy contract and its implementations (random, scripted oracle, BC-RNN, VLA)."""
