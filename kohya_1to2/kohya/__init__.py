"""Everything we know about sd-scripts, for the pinned release (facts.SD_SCRIPTS_TAG); other modules ask here.

Read from the pinned tree (vendor/sd-scripts); no torch, no subprocess. `from kohya_1to2 import kohya` gives every
public name of the modules below (buckets excepted: `kohya.buckets`). On a version bump, re-check:
- facts.py: the tag, commit and file hashes; script names; the lycoris/torch pins; requirements.txt handling;
  optimizer and scheduler names (train_util.get_optimizer / get_scheduler_fix), the bitsandbytes ones;
  base-model forms; path-valued training keys; the default max_train_steps; the bucket step per family;
  which network_args are structural.
- options.py: every option name we write or read (argparse in train_util / train_network, config_util's schema).
- dataset_scope.py: read_config_from_file's one-level flattening; config_util's [general] -> [[datasets]] ->
  subset merge and its subset defaults.
- captions.py: how a caption is found (suffix case, `<stem><ext>`) and read (UTF-8 only, first line, an empty
  file asserts).
- buckets.py: the port of BucketManager / make_bucket_resolutions and its defaults.
- logs.py: the lines we parse (weights report, "No data found", the progress bar).
- outputs.py: output naming (final, per-epoch, state folders, samples, TensorBoard).
- prompts.py: the sample-prompt line grammar, the default sample steps, the `epoch N/M` line.
- gen_img.py: gen_img.py's options and prompt-line grammar.
- checkpoints.py: how a base model says its prediction type (modelspec metadata, `v_pred` key, diffusers config).
- the parser snapshot (data/kohya_<tag>.json): regenerate with tools/snapshot_kohya_parser.py.
Tests: tests/test_kohya.py; tests/integration/test_check_corpus.py checks these against the real code;
tests/test_architecture.py keeps other modules from spelling sd-scripts names.
"""

from kohya_1to2.kohya.captions import *  # noqa: F403
from kohya_1to2.kohya.checkpoints import *  # noqa: F403
from kohya_1to2.kohya.dataset_scope import *  # noqa: F403
from kohya_1to2.kohya.facts import *  # noqa: F403
from kohya_1to2.kohya.gen_img import *  # noqa: F403
from kohya_1to2.kohya.logs import *  # noqa: F403
from kohya_1to2.kohya.options import *  # noqa: F403
from kohya_1to2.kohya.outputs import *  # noqa: F403
from kohya_1to2.kohya.prompts import *  # noqa: F403
