# The two commands README.md opens with. Each sets up .venv first (a no-op when it is current).
.PHONY: setup serve test lint bench-embeddings bench-rerank bench-chat bench-soak

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
