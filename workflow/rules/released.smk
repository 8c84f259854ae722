# Released artifacts instead of training (docs/released.md).
#
#   download_raw[run]     raw training snapshots of a released-raw run (edm2 download of the folder)
#   download_net[file]    one released post-hoc reconstruction (a generation preset's net or guide)
#   score_released[name]  FID / FD_DINOv2 of a released net with its guidance (edm2 metrics gen)
#   released_table        our values next to the reported ones

import os
import re
import shlex


rule download_raw:
    """The raw snapshots of a released-raw run. They are fetched into a download folder that
    survives a failed job (so a rerun resumes from the partial files) and then hard-linked into
    place (moved with released.keep_raw: false, so that deleting them frees the disk). Another
    selection (url, include, kimg) gets a folder of its own (raw-<hash>, as a trained run's
    train-<hash>), whose reconstructions are scored anew; it fetches only what it lacks. The number of parallel transfers is a
    resource, not a parameter: changing it schedules nothing."""
    output:
        snapshots=raw_output(directory(RAW_DIR)),
        record=RAW_RECORD,
    log:
        log_file("download_raw", "{run}-{selection}"),
    benchmark:
        bench_file("download_raw", "{run}-{selection}")
    wildcard_constraints:
        run="|".join(re.escape(r) for r in RAW_RUNS) or "(?!)",
        selection="[0-9a-f]{8}",
    conda:
        "../envs/train.yaml"
    threads: rule_threads("download_raw")
    resources:
        **rule_resources("download_raw"),
        transfers=RELEASED_CFG["jobs"],
    params:
        url=lambda wc: MODELS[wc.run]["url"],
        include=lambda wc: " ".join(f"--include {shlex.quote(p)}" for p in MODELS[wc.run]["include"]),
        stage=lambda wc: fill(RAW_STAGE, run=wc.run),
        place="--link-into" if RELEASED_CFG["keep_raw"] else "--move-into",
    shell:
        "python -m edm2 download {params.url:q} --dest {params.stage:q} --jobs {resources.transfers}"
        " {params.include} --no-progress {params.place} {output.snapshots:q} > {log:q} 2>&1; "
        "cp {output.snapshots:q}/SHA256SUMS {output.record:q}"


rule download_net:
    """One released network pickle (verified; its SHA-256 recorded in released/nets/SHA256SUMS)."""
    output:
        RELEASED_NET,
    log:
        log_file("download_net", "{file}"),
    benchmark:
        bench_file("download_net", "{file}")
    wildcard_constraints:
        file="|".join(re.escape(f) for f in RELEASED_NET_URLS) or "(?!)",
    conda:
        "../envs/eval.yaml"
    threads: rule_threads("download_net")
    resources:
        **rule_resources("download_net"),
    params:
        url=lambda wc: RELEASED_NET_URLS[wc.file],
        dest=lambda wc, output: os.path.dirname(output[0]),
    shell:
        "python -m edm2 download {params.url:q} --dest {params.dest:q} --no-progress > {log:q} 2>&1"


rule score_released:
    """A released net scored as the paper did: `score.num` images over `score.seeds_ranges` seed
    ranges (the table reports `score.statistic`, the paper the minimum of 3)."""
    input:
        unpack(released_score_inputs),
    output:
        RELEASED_SCORE,
    log:
        log_file("score_released", "{name}"),
    benchmark:
        bench_file("score_released", "{name}")
    wildcard_constraints:
        name="|".join(re.escape(n) for n in RELEASED) or "(?!)",
    conda:
        "../envs/eval.yaml"
    threads: rule_threads("score")
    resources:
        **rule_resources("score"),
    params:
        ref=ref_stats(),
        metrics=lambda wc: ",".join(RELEASED[wc.name]["metrics"]),
        num=config["score"]["num"],
        seed=config["score"]["seed"],
        ranges=config["score"]["seeds_ranges"],
        steps=config["score"]["steps"],
        batch=config["score"]["batch"],
        guide=released_score_args,
        extra=config["score"]["extra_args"],
    shell:
        "python -m edm2 metrics gen --net {input.net:q} {params.guide} --ref {params.ref:q}"
        " --metrics {params.metrics} --num {params.num} --seed {params.seed} --seeds-ranges {params.ranges}"
        " --steps {params.steps} --batch {params.batch} {params.extra} --json {output:q} > {log:q} 2>&1"


rule released_table:
    """Our value of every released net next to the value the paper reports."""
    input:
        [released_score_file(name) for name in RELEASED],
    output:
        csv=report(fill(RELEASED_TABLE, ext="csv"), caption="../report/released.rst", category="Tables"),
        md=fill(RELEASED_TABLE, ext="md"),
    log:
        log_file("released_table"),
    benchmark:
        bench_file("released_table")
    conda:
        "../envs/report.yaml"
    threads: rule_threads("released_table")
    resources:
        **rule_resources("released_table"),
    params:
        args=released_table_args,
        statistic=config["score"]["statistic"],
    shell:
        "python -m edm2 report released {params.args} --statistic {params.statistic}"
        " --out {output.csv:q} --md {output.md:q} > {log:q} 2>&1"
