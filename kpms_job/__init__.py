"""kpms-job: one manifest runs the whole Keypoint-MoSeq pipeline as a batch job."""

__version__ = "0.1.0"
