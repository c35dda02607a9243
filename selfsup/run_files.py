"""The file names of a run directory, and nothing else: a leaf that the command line's help
texts read without loading the readers and writers of ``selfsup.run_dir`` (which owns them and
re-exports them; no other module spells one)."""

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = f"{CHECKPOINT_DIR}/last.pt"
TOKENIZER_FILE = "tokenizer.json"
ENCODER_WEIGHTS_FILE = "encoder.safetensors"
ENCODER_SPEC_FILE = "encoder.json"
HEALTH_VERDICT_FILE = "health_verdict.json"
EVAL_FILE = "eval.json"  # on another data set: eval-<name>.json (RunDir.eval_file)
TSNE_FILE = "tsne.npz"  # on another data set: tsne-<name>.npz
FINETUNE_FILE = "finetune.json"
REPORT_FILE = "report.md"
BO_CACHE_DIR = "bo-embeddings"
LOCK_FILE = ".lock"  # held by the process writing the run (RunDir.lock)

# the report's plots; an evaluation's own are named after its eval file
# (RunDir.label_efficiency_plot, RunDir.tsne_plot)
EFFECTIVE_RANK_PLOT = "effective_rank.png"
SPECTRUM_PLOT = "spectrum.png"
LOSS_LR_PLOT = "loss_lr.png"
PROBE_PLOT = "probe.png"
HELD_OUT_PERPLEXITY_PLOT = "held_out_perplexity.png"
FINETUNE_PLOT = "finetune_label_efficiency.png"
# the report's pictures (selfsup.report.pictures)
MAE_RECONSTRUCTIONS = "mae_reconstructions.png"
RECONSTRUCTIONS = "reconstructions.png"
VAE_SAMPLES = "vae_samples.png"
VAE_INTERPOLATIONS = "vae_interpolations.png"
ATTENTION_MAPS = "attention_maps.png"
