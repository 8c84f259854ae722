# Paths: every file and folder the workflow writes, as one named pattern each. A rule declares
# the pattern as its output (its wildcards in braces); an input function or a target list fills
# the same pattern in with `fill`, so a path is spelled in one place only.
#
#   runs/<run>/train-<opts>/training-done.json        a trained run (opts: hash of its options)
#   runs/<run>/raw-<selection>/, .SHA256SUMS          a released-raw run's downloaded snapshots
#   runs/<run>/phema/phema-<kimg>-<std>.safetensors   the EMA grid, runs/<run>/phema-refine/ finer
#   runs/<run>/magnitudes/<kimg>.json                 activation/weight magnitudes of one snapshot
#   runs/<run>/phema-tensor/, runs/<run>/phema-at/    per-tensor variants (Fig. 5b), earlier times (5c)
#   scores/<run>/<guidance>/ema-<std>.json            one score (ema-<std>-guide-<std>: a 2-D EMA sweep)
#   scores-tensor/..., scores-at/...                  the scores of Fig. 5b and 5c
#   search/evals/..., search/<search>/...             the guidance search's evaluations and rounds
#   tables/, plots/, summary.{md,html}                aggregates, figures, the summary page
#   released/nets/<file>, released/scores/<name>.json released nets and their scores
#   logs/<rule>/..., benchmarks/<rule>/...            one log and one benchmark per job

import re
import urllib.parse

from edm2.naming import PHEMA_PREFIX, SNAPSHOT_PREFIX, snapshot_name, std_text, tensor_variant_prefix

DATA = f"{RESULTS}/data"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"

# wildcard_constraints (also used by the rules): names are path segments, stds '0.xyz'.
WC = {
    "run": r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    "guidance": r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    "std": r"\d\.\d{3}",
    "kimg": r"\d{7}",
    "opts": r"[0-9a-f]{8}",
    "tensor": r"[^/=,]+",
    "metric": r"fid|fd_[a-z0-9]+",
    "point": r"w\d+\.\d{3}[a-z0-9.-]*",  # edm2.search.Point.name
    "round": r"\d+",
}


def fill(pattern, **wildcards):
    """One path of a pattern: its {wildcards} replaced by the given values."""
    return pattern.format(**wildcards)


# --- Data ---------------------------------------------------------------------------------------

DIGITS = f"{DATA}/digits"
DATASET_ZIP = f"{DATA}/dataset.zip"
LATENTS_ZIP = f"{DATA}/latents.zip"
DETECTOR = f"{DATA}/detector-cnn.safetensors"
REF_STATS = f"{DATA}/ref-stats.npz"


def training_data():
    """The file `edm2 train --data` reads: the latents with data.latents, else the images."""
    return LATENTS_ZIP if config["data"]["latents"] else DATASET_ZIP


def ref_stats():
    """Reference statistics: computed by `ref_stats`, or given as a path or URL (data.ref)."""
    return config["data"]["ref"] or REF_STATS


def ref_input():
    """The reference statistics as an input file (nothing for a URL, which the command fetches)."""
    ref = ref_stats()
    return [] if re.match(r"^[a-z][a-z0-9+.-]*://", ref) else [ref]


# --- Runs: training, released raw snapshots, post-hoc EMA -----------------------------------------

RUN_DIR = f"{RESULTS}/runs/{{run}}/train-{{opts}}"
TRAIN_DONE = f"{RUN_DIR}/training-done.json"
RAW_DIR = f"{RESULTS}/runs/{{run}}/raw-{{selection}}"
RAW_RECORD = f"{RAW_DIR}.SHA256SUMS"  # SHA-256 manifest, kept when the snapshots are deleted
RAW_STAGE = f"{RESULTS}/downloads/raw/{{run}}"  # the download folder that survives a failed job
# The file name `edm2 phema` writes (edm2.naming.snapshot_name): kimg in 7 digits, std in 3 decimals.
NET_NAME = f"{PHEMA_PREFIX}-{{kimg}}-{{std}}.safetensors"
PHEMA_DIR = f"{RESULTS}/runs/{{run}}/phema"
PHEMA_NET = f"{PHEMA_DIR}/{NET_NAME}"
REFINE_DIR = f"{RESULTS}/runs/{{run}}/phema-refine"
REFINED_NET = f"{REFINE_DIR}/{NET_NAME}"
MODEL_INFO = f"{RESULTS}/runs/{{run}}/model-info.json"
PHEMA_TENSOR_DIR = f"{RESULTS}/runs/{{run}}/phema-tensor"  # phema.per_tensor: every variant, one pass
PHEMA_AT_DIR = f"{RESULTS}/runs/{{run}}/phema-at"  # phema.at_kimg: the grid at every earlier time, one pass

# The options hash of every trained run (config.smk), computed once.
RUN_OPTS = {run: train_opts_hash(run) for run in MODELS if MODELS[run]["source"] == "train"}


def run_dir(run):
    return fill(RUN_DIR, run=run, opts=RUN_OPTS[run])


def raw_dir(run):
    """The raw snapshots of a released-raw run (temporary with released.keep_raw: false)."""
    return fill(RAW_DIR, run=run, selection=raw_selection_hash(run))


def raw_record(run):
    """SHA-256 manifest of a released-raw run's downloaded snapshots (kept when they are deleted)."""
    return fill(RAW_RECORD, run=run, selection=raw_selection_hash(run))


def train_done(run):
    """The file that says a run's snapshots are complete: training-done.json of a trained run, or
    the record of a released-raw run's download (`ancient`: a download repeated after the raw
    snapshots were deleted, for a changed EMA grid, re-scores nothing)."""
    if MODELS[run]["source"] == "released-raw":
        return ancient(raw_record(run))
    return fill(TRAIN_DONE, run=run, opts=RUN_OPTS[run])


def _net_fields(run, std, kimg=None):
    """The wildcards of a reconstructed network's file: kimg in 7 digits (the run's last snapshot
    unless given), std in 3 decimals."""
    kimg = MODELS[run]["kimg"] if kimg is None else kimg
    return {"run": run, "kimg": f"{int(kimg):07d}", "std": std_text(std)}


def phema_dir(run):
    return fill(PHEMA_DIR, run=run)


def phema_file(run, std, kimg=None):
    """The network of `run` reconstructed at `std` of the coarse grid (at training `kimg`: an
    early guide, for autoguidance)."""
    return fill(PHEMA_NET, **_net_fields(run, std, kimg))


def refine_dir(run):
    return fill(REFINE_DIR, run=run)


def refined_file(run, std):
    """The network of `run` reconstructed at a refined `std` (a file of the phema_refine folder)."""
    return fill(REFINED_NET, **_net_fields(run, std))


def model_info(run):
    return fill(MODEL_INFO, run=run)


def phema_tensor_dir(run):
    return fill(PHEMA_TENSOR_DIR, run=run)


def tensor_net_file(run, tensor, std, base):
    """The variant of `run` whose `tensor` has EMA length `std` and the rest `base` (the file
    `edm2 phema --tensor-std` writes: edm2.naming.tensor_variant_prefix)."""
    prefix = tensor_variant_prefix(PHEMA_PREFIX, {tensor: float(std)})
    return f"{phema_tensor_dir(run)}/{snapshot_name(prefix, MODELS[run]['kimg'], base)}"


def phema_at_dir(run):
    return fill(PHEMA_AT_DIR, run=run)


def at_net_file(run, kimg, std):
    """The grid network of `run` reconstructed at the earlier training time `kimg`."""
    return f"{phema_at_dir(run)}/{snapshot_name(PHEMA_PREFIX, kimg, std)}"


def traditional_snapshot(run):
    """The last training snapshot of a config-A run (its one traditional EMA): `edm2 train`'s name
    (edm2.naming.snapshot_name) in the run folder."""
    return f"{run_dir(run)}/{snapshot_name(SNAPSHOT_PREFIX, MODELS[run]['kimg'], run_stds(run)[0])}"


# --- Scores, tables, plots, summary ---------------------------------------------------------------

SCORE = f"{RESULTS}/scores/{{run}}/{{guidance}}/ema-{{std}}.json"
SCORE_SWEEP = f"{RESULTS}/scores/{{run}}/{{guidance}}/ema-{{std}}-guide-{{gstd}}.json"  # 2-D EMA sweep
REFINE_GRID = f"{RESULTS}/refine/grid.json"
RESULT_SET = f"{RESULTS}/tables/result-set.txt"
SCORES_CSV = f"{RESULTS}/tables/scores.csv"
BEST_CSV = f"{RESULTS}/tables/best.csv"
TABLE2 = f"{RESULTS}/tables/table2.{{ext}}"
TABLE1 = f"{RESULTS}/tables/table1.{{ext}}"  # the ablation ladder's Table 1
FIG5A_PLOT = f"{RESULTS}/plots/fig5a-{{metric}}.{{ext}}"  # and its Fig. 5a
EMA_SWEEP_PLOT = f"{RESULTS}/plots/ema-sweep-{{metric}}.{{ext}}"
GFLOPS_PLOT = f"{RESULTS}/plots/gflops-{{metric}}.{{ext}}"
LOSS_PLOT = f"{RESULTS}/plots/training-loss.{{ext}}"
SAMPLE_GRID = f"{RESULTS}/plots/samples/{{run}}/{{guidance}}.png"
SAMPLE_IMAGES = f"{RESULTS}/plots/samples/{{run}}/.{{guidance}}-images"  # scratch folder of a grid
EMA_HEATMAP = f"{RESULTS}/plots/ema-heatmap-{{guidance}}-{{metric}}.{{ext}}"  # autoguidance Fig. 3c
SUMMARY = f"{RESULTS}/summary.{{ext}}"
TENSOR_SCORE = f"{RESULTS}/scores-tensor/{{run}}/{{guidance}}/{{tensor}}/ema-{{std}}.json"  # Fig. 5b
AT_SCORE = f"{RESULTS}/scores-at/{{run}}/{{guidance}}/kimg-{{kimg}}/ema-{{std}}.json"  # Fig. 5c
SWEEP_SET = f"{RESULTS}/tables/sweep-set-{{run}}.txt"  # the scores of Fig. 5b/5c (as RESULT_SET)
FIG5B_PLOT = f"{RESULTS}/plots/fig5b-{{run}}-{{metric}}.{{ext}}"
FIG5C_PLOT = f"{RESULTS}/plots/fig5c-{{run}}-{{metric}}.{{ext}}"
PLOT_EXTS = ["png", "svg"]
TABLE2_EXTS = ["csv", "md", "tex"]


def score_file(run, guidance, std, gstd=None):
    """The score of `run` at EMA length `std` under a guidance setting; with a 2-D EMA sweep of
    the setting, the guide's length `gstd` is in the name too."""
    if GUIDANCE[guidance]["sweep"] and gstd is not None:
        return fill(SCORE_SWEEP, run=run, guidance=guidance, std=std, gstd=gstd)
    return fill(SCORE, run=run, guidance=guidance, std=std)


def heatmap_files():
    """The EMA heat maps of the guidance settings that sweep the guide's EMA length."""
    return [
        fill(EMA_HEATMAP, guidance=g, metric=m, ext=ext)
        for g, setting in GUIDANCE.items()
        if setting["sweep"] and any(run in SCORED_RUNS for run in setting["runs"])
        for m in setting["metrics"]
        for ext in PLOT_EXTS
    ]


# --- The guidance search (config `search`) --------------------------------------------------------

# One evaluation: run, guidance setting (its guide), the EMA lengths, and the point's name
# (edm2.search.Point.name: weight, interval, image count, seed ranges).
SEARCH_EVAL = f"{RESULTS}/search/evals/{{run}}/{{guidance}}/ema-{{std}}-guide-{{gstd}}/{{point}}.json"
SEARCH_STATE = f"{RESULTS}/search/{{search}}/{{run}}/{{metric}}/round-{{round}}.json"
SEARCH_RESULT = f"{RESULTS}/search/{{search}}/{{run}}/{{metric}}/result.json"
SEARCH_TABLE = f"{RESULTS}/tables/search-{{search}}.{{ext}}"
SEARCH_PLOT = f"{RESULTS}/plots/search-{{search}}.{{ext}}"


def search_eval_file(search, run, point):
    """The evaluation of one point of a search (shared with every search of the same setting)."""
    s = SEARCHES[search]
    std, gstd = s["stds"][run]
    return fill(SEARCH_EVAL, run=run, guidance=s["guidance"], std=std, gstd=gstd, point=point)


def search_plot_files():
    """Each search's plot (the metric along each searched axis)."""
    return [fill(SEARCH_PLOT, search=s, ext=ext) for s in SEARCHES for ext in PLOT_EXTS]


def search_files():
    """Each search's table and plot."""
    return [fill(SEARCH_TABLE, search=s, ext=ext) for s in SEARCHES for ext in ("csv", "md")] + search_plot_files()


def plot_files():
    return (
        expand(EMA_SWEEP_PLOT, metric=METRICS, ext=PLOT_EXTS)
        + expand(GFLOPS_PLOT, metric=METRICS, ext=PLOT_EXTS)
        + expand(LOSS_PLOT, ext=PLOT_EXTS)
        + sweep_plot_files()
    )


def tensor_score_files(run):
    g = sweep_guidance(run)
    return [
        fill(TENSOR_SCORE, run=run, guidance=g, tensor=t, std=s)
        for t in PER_TENSOR["tensors"]
        for s in PER_TENSOR["grid"]
    ]


def at_score_files(run):
    g = sweep_guidance(run)
    return [fill(AT_SCORE, run=run, guidance=g, kimg=f"{k:07d}", std=s) for k in AT_KIMG for s in AT_GRID]


def sweep_plot_files():
    """Fig. 5b and 5c of every sweep run (phema.per_tensor, phema.at_kimg), per metric."""
    files = []
    for run in SWEEP_RUNS:
        if PER_TENSOR is not None:
            files += expand(FIG5B_PLOT, run=run, metric=METRICS, ext=PLOT_EXTS)
        if AT_KIMG:
            files += expand(FIG5C_PLOT, run=run, metric=METRICS, ext=PLOT_EXTS)
    return files


def table_files():
    return expand(TABLE2, ext=TABLE2_EXTS)


def ablation_files():
    """Table 1 and Fig. 5a, when the models include a config other than G."""
    if not ablation_runs():
        return []
    return expand(TABLE1, ext=TABLE2_EXTS) + expand(FIG5A_PLOT, metric=METRICS[:1], ext=PLOT_EXTS)


def sample_files():
    return [fill(SAMPLE_GRID, run=run, guidance=g) for run, g in SCORED]


def summary_files():
    return [fill(SUMMARY, ext="md"), fill(SUMMARY, ext="html")]


# --- Magnitudes over training (EDM2 Figs. 3 and 15; `edm2 analyze magnitudes`) -------------------

MAGNITUDES = f"{RESULTS}/runs/{{run}}/magnitudes"  # a trained run's folder of <kimg>.json, one per snapshot
RAW_MAGNITUDES = f"{RESULTS}/runs/{{run}}/magnitudes-{{selection}}"  # every raw snapshot, weights only (a folder)
MAGNITUDES_PLOT = f"{RESULTS}/plots/magnitudes/{{run}}.png"  # Fig. 3/15 panels of one run
FIG15_PLOT = f"{RESULTS}/plots/fig15-magnitudes.png"  # the grid across the configs of an ablation


def magnitude_files():
    """Per-run magnitude plots, and the Fig. 15 grid when the models include configs other than G."""
    if not config["magnitudes"]["enabled"]:
        return []
    files = [fill(MAGNITUDES_PLOT, run=run) for run in MODELS]
    return files + ([FIG15_PLOT] if ablation_runs() else [])


# --- The 2-D toy example of autoguidance (`edm2 toy`; toy.enabled) -------------------------------

TOY_PLOT = f"{RESULTS}/plots/toy.png"
TOY_JSON = f"{RESULTS}/tables/toy.json"  # the measures of its panels


def toy_files():
    return [TOY_PLOT, TOY_JSON] if config["toy"]["enabled"] else []


def toy_args():
    """Options of `edm2 toy` that the config sets (toy.iters, ...; null: the command's default)."""
    return " ".join(f"--{key.replace('_', '-')} {value}" for key, value in config["toy"].items()
                    if key != "enabled" and value is not None)  # fmt: skip


# --- Released nets (`source: released`) -----------------------------------------------------------

RELEASED_NET = f"{RESULTS}/released/nets/{{file}}"
RELEASED_SCORE = f"{RESULTS}/released/scores/{{name}}.json"
RELEASED_TABLE = f"{RESULTS}/tables/released.{{ext}}"


def released_net_file(url):
    """Where a released net is read from: a `file://` URL in place, else the file it is
    downloaded to (one per URL file name, shared by models)."""
    if url.startswith("file://"):
        return urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    return fill(RELEASED_NET, file=_url_file(url))


def released_score_file(name):
    return fill(RELEASED_SCORE, name=name)


def released_files():
    """Outputs of the released nets: the table of our values next to the reported ones."""
    if not RELEASED:
        return []
    return [fill(RELEASED_TABLE, ext=ext) for ext in ("csv", "md")]


# --- Logs and benchmarks --------------------------------------------------------------------------


def log_file(rule, name="all"):
    """The log of a rule's job; `name` may hold the rule's wildcards ('{run}-{kimg}')."""
    return f"{LOGS}/{rule}/{name}.log"


def bench_file(rule, name="all"):
    """The benchmark of a rule's job, named as its log."""
    return f"{BENCH}/{rule}/{name}.tsv"
