"""The DistillationJob controller: reconciler (the state machine) over gate, launchers and workdir.

Imports point one way: ``reconciler`` -> ``gate`` (pure verdicts), ``launchers``
(where the runner runs) -> ``workdir`` (the files a job leaves behind). The
runner's own side of those files is :mod:`cloud_controller.distill_runner`.
"""
