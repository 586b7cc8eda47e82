"""The sd-scripts option names we write into a TOML, read back from one, or pass on a command line.

Training options are train_util / train_network argparse dests (read_config_from_file flattens the TOML onto
them); dataset options are config_util's schema keys. Written as constants so that a rename on a version bump is
one edit here, and `tests/test_architecture.py` keeps every other module from spelling them.
"""

from __future__ import annotations

# training TOML / argparse
PRETRAINED_MODEL = "pretrained_model_name_or_path"
OUTPUT_DIR = "output_dir"
OUTPUT_NAME = "output_name"
SAVE_MODEL_AS = "save_model_as"
NETWORK_MODULE = "network_module"
NETWORK_WEIGHTS = "network_weights"
NETWORK_ARGS = "network_args"
NETWORK_DIM = "network_dim"
NETWORK_ALPHA = "network_alpha"
DATASET_CONFIG = "dataset_config"
SAMPLE_PROMPTS = "sample_prompts"
LOGGING_DIR = "logging_dir"
MAX_TOKEN_LENGTH = "max_token_length"
MAX_TRAIN_STEPS = "max_train_steps"
TRAIN_BATCH_SIZE = "train_batch_size"
RESUME = "resume"
SKIP_UNTIL_INITIAL_STEP = "skip_until_initial_step"

# dataset TOML (config_util)
CAPTION_EXTENSION = "caption_extension"
CAPTION_PREFIX = "caption_prefix"
CAPTION_SEPARATOR = "caption_separator"
KEEP_TOKENS = "keep_tokens"
SHUFFLE_CAPTION = "shuffle_caption"
ENABLE_BUCKET = "enable_bucket"
BUCKET_RESO_STEPS = "bucket_reso_steps"
MIN_BUCKET_RESO = "min_bucket_reso"
MAX_BUCKET_RESO = "max_bucket_reso"
BUCKET_NO_UPSCALE = "bucket_no_upscale"
IMAGE_DIR = "image_dir"
NUM_REPEATS = "num_repeats"
RESOLUTION = "resolution"
BATCH_SIZE = "batch_size"
IS_REG = "is_reg"
CLASS_TOKENS = "class_tokens"
PRIOR_LOSS_WEIGHT = "prior_loss_weight"


def flag(option: str) -> str:
    """The command-line spelling of an option (`--output_dir`)."""
    return f"--{option}"


# training options `evaluate` reads from stage 1's config to sample like training did, and sd-scripts' own
# `--config_file` (train_util.read_config_from_file) that `launch` passes
CONFIG_FILE = "config_file"
V2 = "v2"
V_PARAMETERIZATION = "v_parameterization"
ZERO_TERMINAL_SNR = "zero_terminal_snr"
ALPHA_MASK = "alpha_mask"
"""A subset key (config_util): the images' alpha channel weights the loss (train_util.load_image keeps it;
train_network applies it, custom_train_functions.apply_masked_loss, resized to the latents by area)."""
VAE = "vae"
TOKENIZER_CACHE_DIR = "tokenizer_cache_dir"
CLIP_SKIP = "clip_skip"
SAMPLE_SAMPLER = "sample_sampler"
MIXED_PRECISION = "mixed_precision"
XFORMERS = "xformers"
SDPA = "sdpa"
SAVE_PRECISION = "save_precision"
FULL_FP16 = "full_fp16"
FULL_BF16 = "full_bf16"
FP8_BASE = "fp8_base"
OPTIMIZER_TYPE = "optimizer_type"
LR_SCHEDULER = "lr_scheduler"
LR_SCHEDULER_TYPE = "lr_scheduler_type"
LR_SCHEDULER_MIN_LR_RATIO = "lr_scheduler_min_lr_ratio"
LR_SCHEDULER_ARGS = "lr_scheduler_args"
LEARNING_RATE = "learning_rate"
UNET_LR = "unet_lr"
TEXT_ENCODER_LR = "text_encoder_lr"
MAX_TRAIN_EPOCHS = "max_train_epochs"
MAX_DATA_LOADER_N_WORKERS = "max_data_loader_n_workers"
SAMPLE_EVERY_N_EPOCHS = "sample_every_n_epochs"
SAVE_EVERY_N_EPOCHS = "save_every_n_epochs"
SAVE_STATE = "save_state"

CUDA_ONLY_FLAGS = (FULL_FP16, FULL_BF16, FP8_BASE)
"""Boolean training options that need a CUDA device (sd-scripts casts the whole network or base model)."""
