"""Prepares a data set once: `python -m lln_jax.prepare voc2012 --manual_dir=DIR`.

Reads the official files in the manual dir (see each data set's instructions in the README
or in the error message), checks the image counts against SPEC.md, decodes every image
once, and writes ArrayRecord files under `--data_dir` (a local path or a `gs://` bucket;
TFDS's default, `~/tensorflow_datasets` or `$TFDS_DATA_DIR`, when unset), with the label
files a run starts from. Run on data prepared by an older version, it writes the missing
label files in place.
"""

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Where the prepared data goes.")
flags.DEFINE_string("manual_dir", None, "Where the downloaded official files are.")
flags.DEFINE_bool("check_counts", True, "Fail unless the counts are the spec's (full sets).")


def main(argv):
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    from lln_jax import datasets

    if len(argv) != 2:
        raise app.UsageError(f"Name one data set of {sorted(datasets.DATASETS)}")
    name = argv[1]
    builder = datasets.prepare(
        name, FLAGS.data_dir, manual_dir=FLAGS.manual_dir, check_counts=FLAGS.check_counts
    )
    for split, info in builder.info.splits.items():
        logging.info("%s %s: %d examples in %s", name, split, info.num_examples, builder.data_dir)


if __name__ == "__main__":
    app.run(main)
