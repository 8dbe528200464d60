"""The lab: everything beside the four core files. The task and its training, the evaluation,
the baselines, real checkpoints, the pictures and the speed layer. Run its scripts from the
repository root as modules: `python -m lab.train`, `python -m lab.eval`, `python -m lab.view`."""
