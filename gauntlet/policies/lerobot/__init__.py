"""LeRobot policies (lerobot 0.4.x: ACT, Diffusion, pi0, pi0.5, SmolVLA) on Gauntlet's batched replicas.

config.py reads a pretrained directory with JSON alone (Gauntlet's process, pre-flight checks);
policy.py and fixtures.py import LeRobot and run only inside the runtime_env of environment.py.
"""
