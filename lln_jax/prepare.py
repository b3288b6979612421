"""Prepares a data set once: `python -m lln_jax.prepare voc2012 --manual_dir=DIR`.

Reads the official files in the manual dir (see each data set's instructions in the README
or in the error message), checks the image counts against SPEC.md, decodes every image
once, and writes ArrayRecord files under `--data_dir` (a local path or a `gs://` bucket;
TFDS's default, `~/tensorflow_datasets` or `$TFDS_DATA_DIR`, when unset), with the label
files a run starts from. Run on data prepared by an older version, it writes the missing
label files in place.

With `--image_size=448` it also stores every image resized to the training size (on data
prepared earlier it adds only that store), so that runs with `--config.data.storage=jpeg95`
(or `raw`) only decode: `lln_jax/data/datasets/resized.py`.
"""

import os

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Where the prepared data goes.")
flags.DEFINE_string("manual_dir", None, "Where the downloaded official files are.")
flags.DEFINE_bool("check_counts", True, "Fail unless the counts are the spec's (full sets).")
flags.DEFINE_integer("image_size", None, "Also store the images resized to this size.")
flags.DEFINE_string("storage", "jpeg95", "Encoding of the resized images: jpeg<quality> or raw.")
flags.DEFINE_integer("num_threads", os.cpu_count(), "Threads that resize the images.")


def main(argv):
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    from lln_jax.data import datasets, image_storage

    if len(argv) != 2:
        raise app.UsageError(f"Name one data set of {sorted(datasets.DATASETS)}")
    name = argv[1]
    storage = None
    if FLAGS.image_size is not None:
        if FLAGS.image_size < 1:
            raise app.UsageError(f"--image_size={FLAGS.image_size} must be positive")
        if FLAGS.storage == image_storage.ORIGINAL or not image_storage.is_valid(FLAGS.storage):
            raise app.UsageError(f"--storage={FLAGS.storage}: give jpeg<1..100> or raw")
        storage = image_storage.parse(FLAGS.storage, FLAGS.image_size)
    builder = datasets.prepare(
        name, FLAGS.data_dir, manual_dir=FLAGS.manual_dir, check_counts=FLAGS.check_counts
    )
    for split, info in builder.info.splits.items():
        logging.info("%s %s: %d examples in %s", name, split, info.num_examples, builder.data_dir)
    if storage is not None:
        store = datasets.write_resized(name, FLAGS.data_dir, storage, num_threads=FLAGS.num_threads)
        for split, info in store["splits"].items():
            logging.info(
                "%s %s: %d images, %.0f bytes per image", storage.name, split, info["count"],
                info["bytes"] / max(info["count"], 1),
            )  # fmt: skip


if __name__ == "__main__":
    app.run(main)
