"""The resume plan (`--dry-run`): what a resume would skip, continue, retry or start, from stored results only."""
from __future__ import annotations

from study.layout import StudyLocation
from study.progress import StudyProgress, read
from study.statuses import RETRIED, SETTLED, UNRECORDED


def plan_lines(progress: StudyProgress, checkpoint_every: int) -> list[str]:
    epochs = progress.epochs
    lines = []
    for t in sorted(progress.trials, key=lambda t: t.trial_id):
        if t.status in SETTLED:
            action = f"skip      ({t.status.lower()}, {t.epochs_on_disk} epochs stored)"
        elif t.status in RETRIED:
            action = f"retry     from its last registered checkpoint (epoch {t.epochs_on_disk} of {epochs} at most; it errored)"
        elif t.status == UNRECORDED:
            action = ("drop      (started after the driver's last snapshot; its rows are removed when the study "
                      "completes, a new trial takes its place)")
        elif t.epochs_on_disk:
            action = f"continue  from its last registered checkpoint (epoch {t.epochs_on_disk} of {epochs} at most)"
        else:
            action = f"restart   from epoch 0 of {epochs} (no checkpoint yet)"
        lines.append(f"  {t.trial_id:<16} {action}")
    known = sum(1 for t in progress.trials if t.status != UNRECORDED)
    new = max(0, progress.requested - known)
    lines.append(f"  {new} new trial(s) to sample (requested {progress.requested}, known {known}); "
                 f"checkpoints every {checkpoint_every} epochs")
    return lines


def plan(location: StudyLocation) -> list[str]:
    progress = read(location)
    args = progress.arguments
    header = [f"Resume plan for study {location.name!r} at {location.display} "
              f"(space {args['space']}, {args['trials']} trials × {args['epochs']} epochs):"]
    return header + plan_lines(progress, int(args.get("checkpoint_every", 1)))
