# Activation and weight magnitudes over training (EDM2 Appendix A.6, Eq. 3; Figs. 3 and 15): every
# snapshot of a trained run measured in one job (magnitudes.enabled), the panels of each run, and for
# an ablation the Fig. 15 grid across its configs. A released-raw run's snapshots are measured
# weights-only in one job, before post-hoc EMA may delete them (released.keep_raw: false).


rule magnitudes:
    """Magnitudes of every snapshot of a trained run, one <kimg>.json each, in one process (the
    start of Python and PyTorch paid once): weights, and activations on magnitudes.num training
    samples at the run's noise distribution (the same draws for every snapshot)."""
    input:
        done=lambda wc: train_done(wc.run),
        data=training_data(),
    output:
        directory(MAGNITUDES),
    log:
        log_file("magnitudes", "{run}"),
    benchmark:
        bench_file("magnitudes", "{run}")
    conda:
        "../envs/train.yaml"
    threads: rule_threads("magnitudes")
    resources:
        **rule_resources("magnitudes"),
    params:
        nets=lambda wc, output: magnitude_args_of_run(wc.run, output[0]),
        data=lambda wc, input: f"--data {shlex.quote(input.data)}" if config["magnitudes"]["activations"] else "",
        extra=magnitude_args(),
    shell:
        "python -m edm2 analyze magnitudes {params.nets} {params.data} {params.extra} > {log:q} 2>&1"


rule magnitudes_raw:
    """Weight magnitudes of every raw snapshot of a released-raw run (the sigma_rel 0.100 EMA)."""
    input:
        snapshots=lambda wc: raw_dir(wc.run),
    output:
        directory(RAW_MAGNITUDES),
    log:
        log_file("magnitudes_raw", "{run}-{selection}"),
    benchmark:
        bench_file("magnitudes_raw", "{run}-{selection}")
    wildcard_constraints:
        selection="[0-9a-f]{8}",
    conda:
        "../envs/train.yaml"
    threads: rule_threads("magnitudes_raw")
    resources:
        **rule_resources("magnitudes_raw"),
    shell:
        "python -m edm2 analyze magnitudes {input.snapshots:q}/*-0.100.pkl --outdir {output:q} > {log:q} 2>&1"


rule magnitude_plot:
    """The Fig. 3/15 panels of one run: activations and weights, max and mean, one line per bucket."""
    input:
        lambda wc: magnitude_inputs(wc.run),
    output:
        report(
            MAGNITUDES_PLOT,
            caption="../report/magnitudes.rst",
            category="Plots",
            subcategory="Magnitudes",
            labels=lambda wc: {"run": wc.run},
        ),
    log:
        log_file("magnitude_plot", "{run}"),
    benchmark:
        bench_file("magnitude_plot", "{run}")
    conda:
        "../envs/report.yaml"
    threads: rule_threads("magnitude_plot")
    resources:
        **rule_resources("magnitude_plot"),
    params:
        files=lambda wc, input: magnitude_json_args(list(input)),
        title=lambda wc: MODELS[wc.run]["label"],
    shell:
        "python -m edm2 analyze plot-magnitudes {params.files} --title {params.title:q} --out {output:q} > {log:q} 2>&1"


rule fig15:
    """EDM2 Fig. 15: the magnitudes of every config of the ablation over training, one row each."""
    input:
        [f for run in ablation_runs() for f in magnitude_inputs(run)],
    output:
        report(FIG15_PLOT, caption="../report/fig15.rst", category="Plots", subcategory="Magnitudes"),
    log:
        log_file("fig15"),
    benchmark:
        bench_file("fig15")
    conda:
        "../envs/report.yaml"
    threads: rule_threads("fig15")
    resources:
        **rule_resources("fig15"),
    params:
        files=lambda wc, input: magnitude_json_args(list(input)),
    shell:
        "python -m edm2 analyze plot-magnitudes {params.files} --title 'Magnitudes over training (EDM2 Fig. 15)'"
        " --out {output:q} > {log:q} 2>&1"
