"""The study driver: `python -m study.run`, `python -m study.status`, `python -m study.bench`."""
