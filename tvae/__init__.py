"""tvae: a from-scratch TernaryVAE trainer (tvae/README.md, docs/design.md) and the task interface the study drives."""
