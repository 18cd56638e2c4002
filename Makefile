# The two set-up-and-go commands (see README): `make demo` and `make test`.
.PHONY: install demo test lint bench

install:
	bash scripts/install.sh

demo: install
	MUJOCO_GL=egl .venv/bin/gauntlet demo --out demo_out

test: install
	MUJOCO_GL=egl .venv/bin/python -m pytest -q

lint: install
	.venv/bin/ruff check gauntlet tests benchmarks plugins

bench: install
	MUJOCO_GL=egl .venv/bin/python benchmarks/bench_env_steps.py
	MUJOCO_GL=egl .venv/bin/python benchmarks/bench_experts.py

.PHONY: closed-loop
closed-loop: install
	bash scripts/closed_loop.sh closed_loop_out
