"""Fitting: resumable Gibbs chains and kappa tuning, below the stages and above the adapter.

- :mod:`.chain`: one resumable chain (``fit_chain``) and the memory settings it runs with
- :mod:`.tuner`: the kappa search itself, pure (no keypoint-moseq), replayable from saved medians;
  its settings in :mod:`.tuner_config`, its verdict and delivered state in :mod:`.tuner_verdict`
- :mod:`.tuned`: the tuner wired into a chain for the AR-HMM and the full model

Nothing here imports a stage: a stage hands in how to build its chain's first model.
"""
