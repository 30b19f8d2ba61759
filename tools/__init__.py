"""Hand-run tools of the project, outside the shipped packages: benchmarks (``bench``), the GPU machine's scripts
(``gpu``) and the demo model's training pipeline (``train_demo``). Run from the repository root:
``python -m tools.X``."""
