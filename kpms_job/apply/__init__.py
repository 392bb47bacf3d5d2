"""Applying a fitted model to new recordings (``kpms-job apply``): its manifest, the trained
model's description and the checks against it, and the batched, resumable run."""
