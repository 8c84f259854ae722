# Released artifacts instead of training (docs/released.md).
#
#   download_raw[run]     raw training snapshots of a released-raw run (edm2 download of the folder)
#   download_net[file]    one released post-hoc reconstruction (a generation preset's net or guide)
#   score_released[name]  FID / FD_DINOv2 of a released net with its guidance (edm2 metrics gen)
#   released_table        our values next to the reported ones


import re
import shlex

from snakemake.exceptions import WorkflowError


def released_net_urls():
    """{file name: URL} of every released net the configuration downloads (not `file://` ones)."""
    urls = {}
    for m in RELEASED.values():
        for url in (m["net"], m["gnet"]):
            if url and not url.startswith("file://"):
                name = _url_file(url)
                if urls.get(name, url) != url:
                    raise WorkflowError(f"models: two released nets share the file name {name}; rename one URL")
                urls[name] = url
    return urls


RELEASED_NET_URLS = released_net_urls()


def raw_output(path):
    """The raw snapshots folder, temporary with released.keep_raw: false (deleted once every
    phema job has read it)."""
    return path if RELEASED_CFG["keep_raw"] else temp(path)


def released_score_inputs(wc):
    """Inputs of a released net's score: the net (and its guide), the reference, the detector."""
    m = RELEASED[wc.name]
    inputs = {"net": released_net_file(m["net"]), "ref": ref_input()}
    if m["gnet"] and m["guidance"] != 1.0:
        inputs["gnet"] = released_net_file(m["gnet"])
    if "fd_cnn" in m["metrics"]:
        inputs["detector"] = DETECTOR
    return inputs


def released_score_args(wc, input):
    """Options of `edm2 metrics gen` for a released net (guide, guidance weight, detector)."""
    m = RELEASED[wc.name]
    args = []
    if "gnet" in input.keys():
        args += [f"--gnet {shlex.quote(input.gnet)}", f"--guidance {m['guidance']:g}"]
    if "fd_cnn" in m["metrics"]:
        args.append(f"--cnn-detector {shlex.quote(DETECTOR)}")
    return " ".join(args)


def released_table_args(wc, input):
    """Options of `edm2 report released`: every score with its label, preset and reported value."""
    args = []
    for name, path in zip(RELEASED, input):
        m = RELEASED[name]
        pairs = [("score", path), ("label", m["label"])]
        if m["reported"] is not None:
            metric = m["metric"] or m["metrics"][0]
            pairs.append(("reported", f"{metric}:{m['reported']:g}"))
        if m["preset"]:
            pairs.append(("preset", m["preset"]))
        args += [f"--{option} {shlex.quote(f'{name}={value}')}" for option, value in pairs]
    return " ".join(args)


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
