# The two commands README.md opens with. Each sets up .venv first (a no-op when it is current).
.PHONY: setup serve test lint bench-embeddings bench-rerank bench-chat bench-soak docker-cpu docker-smoke docker-gpu

setup:
	@bash scripts/setup.sh

serve: setup
	.venv/bin/local-llm serve

test: setup
	.venv/bin/python -m pytest

lint: setup
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/ruff format --check src tests benchmarks
	.venv/bin/mypy

bench-embeddings: setup
	.venv/bin/python benchmarks/embeddings.py

bench-rerank: setup
	.venv/bin/python benchmarks/rerank.py

bench-chat: setup
	.venv/bin/python benchmarks/chat.py

# Ten minutes of mixed load under a RAM budget that forces swaps, with faults (benchmarks/soak.py).
bench-soak: setup
	.venv/bin/python benchmarks/soak.py

# Containers (docs/docker.md). The CPU image needs no registry: its base is made with debootstrap.
docker-cpu: setup
	bash scripts/docker-cpu.sh

# Runs the CPU image with --network none and queries the server inside it (minutes; not part of make test).
docker-smoke:
	bash scripts/docker-smoke.sh

# The CUDA image; it pulls nvidia/cuda from Docker Hub (not possible on this project's machines).
docker-gpu:
	docker build -f Dockerfile -t local-llm-interface:gpu .
