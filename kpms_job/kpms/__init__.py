"""The adapter layer: the only code in kpms_job that imports keypoint_moseq or jax_moseq.

keypoint-moseq's API has sharp edges; these modules know them, so every other module stays
simple and an upgrade touches this package only. Importing the package itself imports nothing;
each module imports JAX and keypoint-moseq (about 6 s), so the pipeline imports them only when a
stage runs.

- :mod:`.io`: one loader per tracking format
- :mod:`.project`: the project config, outlier removal, ``format_data`` and PCA
- :mod:`.gibbs`: the initial model, the resumable Gibbs loop, snapshots, kappa, durations
- :mod:`.results`: results, CSV files, statistics and figures
- :mod:`.movies`: grid movies in bounded memory
- :mod:`.patches`: jax-moseq patches that batch a fit's memory, installed by the fitting code
"""
