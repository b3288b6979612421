"""Data: the builders, their storage, the splits, the observed labels and the pipeline.

`datasets/` prepares and opens each data set (TFDS builders, ArrayRecord storage,
pre-resized images); `image_storage.py` names how images are stored; `observed_labels.py`
samples the observed labels and cuts train from val; `input_pipeline.py` makes the splits
and their global batches; `preprocessing.py` decodes and resizes one image. Knows no model
or loss; imports only `run/` besides itself.
"""
