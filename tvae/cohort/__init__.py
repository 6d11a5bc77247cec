"""Population training: K TernaryVAE runs in one process, every operation serving all of them
(`tvae.cohort.engine.Cohort`). See tvae/README.md, "Cohorts"."""
from tvae.cohort.engine import CHECKPOINT_FILE, Cohort, Status
from tvae.cohort.members import check_compatible, group

__all__ = ["CHECKPOINT_FILE", "Cohort", "Status", "check_compatible", "group"]
