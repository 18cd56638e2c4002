"""LeRobot policies (lerobot 0.6.1 by default, 0.4.4 on request: ACT, Diffusion, pi0, pi0.5, SmolVLA) on Gauntlet's batched replicas.

config.py reads a pretrained directory with JSON alone (Gauntlet's process, pre-flight checks);
policy.py and random_policy.py (random checkpoints for the serving benchmark and the tests, and
LeRobot's own inference path they are compared with) import LeRobot and run only inside the
runtime_env of environment.py.
"""
