# The two set-up-and-go commands (see README): `make demo` and `make test`.
.PHONY: install demo test test-pi lint bench

install:
	bash scripts/install.sh

demo: install
	MUJOCO_GL=egl .venv/bin/gauntlet demo --out demo_out

test: install
	MUJOCO_GL=egl .venv/bin/python -m pytest -q

# pi0 and pi0.5 served batched, equal to LeRobot's inference and evaluated (19 GB free RAM, ~30 min on 2 cores).
test-pi: install
	GAUNTLET_TEST_PI_FAMILY=1 MUJOCO_GL=egl .venv/bin/python -m pytest -q \
		"tests/deployments/test_lerobot_vla_families.py::test_vla_family_is_served_batched_equal_to_lerobot_and_evaluated"

lint: install
	.venv/bin/ruff check gauntlet tests benchmarks plugins

bench: install
	MUJOCO_GL=egl .venv/bin/python benchmarks/bench_env_steps.py
	MUJOCO_GL=egl .venv/bin/python benchmarks/bench_experts.py

.PHONY: closed-loop
closed-loop: install
	bash scripts/closed_loop.sh closed_loop_out
