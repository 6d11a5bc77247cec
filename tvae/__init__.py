"""tvae: a from-scratch TernaryVAE trainer (SPEC §3) and the task interface the study drives."""
