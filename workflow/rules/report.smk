# Results: tidy CSV tables from the score JSONs, the paper's plots and Table 2, sample grids at
# the best EMA length, and a summary page. Outputs marked report(...) go into
# `snakemake --report results/report.html` with the captions of workflow/report/.

import os
import shlex


rule result_set:
    """The exact set of results the configuration names (score JSONs, model infos), one per line.
    Its parameter changes whenever that set does, so it re-runs and the aggregate that reads it
    follows in the same run. Without it, removing an EMA length re-runs phema (its parameters
    changed), and Snakemake does not check the jobs downstream of a re-run job themselves when
    it reaches them only through ancient() files (the scores read phema's outputs so): the
    aggregates would name the removed length until a second run."""
    output:
        RESULT_SET,
    log:
        log_file("result_set"),
    benchmark:
        bench_file("result_set")
    localrule: True
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        **rule_resources("result_set"),
    params:
        members=sorted(coarse_scores() + [model_info(run) for run in MODELS]),
    shell:
        "printf '%s\\n' {params.members:q} > {output:q} 2> {log:q}"


rule aggregate:
    """Score JSONs -> tidy CSV (one row per score and metric) and the best EMA length per
    (run, guidance setting, metric)."""
    input:
        scores=all_scores,
        info=[model_info(run) for run in MODELS],
        members=RESULT_SET,
    output:
        scores=report(SCORES_CSV, caption="../report/scores.rst", category="Tables"),
        best=report(BEST_CSV, caption="../report/best.rst", category="Tables"),
    log:
        log_file("aggregate"),
    benchmark:
        bench_file("aggregate")
    conda:
        "../envs/report.yaml"
    threads: rule_threads("aggregate")
    resources:
        **rule_resources("aggregate"),
    params:
        statistic=config["score"]["statistic"],
        info=lambda wc, input: " ".join(f"--model-info {shlex.quote(f)}" for f in input.info),
    shell:
        "python -m edm2 report aggregate --out {output.scores:q} --best {output.best:q}"
        " --statistic {params.statistic} {params.info} {input.scores:q} > {log:q} 2>&1"


rule plots:
    """Metric vs EMA length per run (optimum marked), best metric vs Gflops, training loss."""
    input:
        scores=SCORES_CSV,
        done=[train_done(run) for run in MODELS],
    output:
        report(
            expand(EMA_SWEEP_PLOT, metric=METRICS, ext=PLOT_EXTS),
            caption="../report/ema_sweep.rst",
            category="Plots",
            subcategory="EMA length",
        ),
        report(
            expand(GFLOPS_PLOT, metric=METRICS, ext=PLOT_EXTS),
            caption="../report/gflops.rst",
            category="Plots",
            subcategory="Gflops",
        ),
        report(
            expand(LOSS_PLOT, ext=PLOT_EXTS),
            caption="../report/training_loss.rst",
            category="Plots",
            subcategory="Training",
        ),
    log:
        log_file("plots"),
    benchmark:
        bench_file("plots")
    conda:
        "../envs/report.yaml"
    threads: rule_threads("plots")
    resources:
        **rule_resources("plots"),
    params:
        outdir=lambda wc, output: os.path.dirname(output[0]),
        metrics=",".join(METRICS),
        runs=lambda wc, input: " ".join(
            shlex.quote(f"--run={run}={os.path.dirname(d)}")
            for run, d in zip(MODELS, input.done)
            if MODELS[run]["source"] == "train"
        ),
        labels=" ".join(shlex.quote(f"--label={run}={m['label']}") for run, m in MODELS.items()),
    shell:
        "python -m edm2 report plots --scores {input.scores:q} --metrics {params.metrics} {params.runs} {params.labels}"
        " --outdir {params.outdir:q} > {log:q} 2>&1"


rule tables:
    """The paper's Table 2 layout (size, Mparams, Gflops, NFE, metric, EMA length; without and
    with guidance) as CSV, Markdown and LaTeX."""
    input:
        SCORES_CSV,
    output:
        report(table_files()[0], caption="../report/table2.rst", category="Tables"),
        table_files()[1],
        table_files()[2],
    log:
        log_file("tables"),
    benchmark:
        bench_file("tables")
    conda:
        "../envs/report.yaml"
    threads: rule_threads("tables")
    resources:
        **rule_resources("tables"),
    params:
        metrics=",".join(METRICS),
        stem=lambda wc, output: os.path.splitext(output[0])[0],
    shell:
        "python -m edm2 report tables --scores {input:q} --metrics {params.metrics} --out {params.stem:q} > {log:q} 2>&1"


rule ablation:
    """The paper's Table 1 (ours next to the reported FID, Mparams, Gflops) and Fig. 5a (metric vs
    EMA length per config, config A as one point), when the models include configs other than G."""
    input:
        SCORES_CSV,
    output:
        tables=expand(TABLE1, ext=TABLE2_EXTS),
        plots=expand(FIG5A_PLOT, metric=METRICS[:1], ext=PLOT_EXTS),
    log:
        log_file("ablation"),
    benchmark:
        bench_file("ablation")
    conda:
        "../envs/report.yaml"
    threads: rule_threads("ablation")
    resources:
        **rule_resources("ablation"),
    params:
        metric=METRICS[0],
        configs=" ".join(f"--config={run}={config}" for run, config in ablation_runs().items()),
        table=lambda wc, output: os.path.splitext(output.tables[0])[0],
        plot=lambda wc, output: os.path.splitext(output.plots[0])[0],
    shell:
        "python -m edm2 report ablation --scores {input:q} --metric {params.metric} {params.configs}"
        " --table {params.table:q} --plot {params.plot:q} > {log:q} 2>&1"


rule samples:
    """A grid of images from the best EMA length of a (run, guidance setting)."""
    input:
        best=BEST_CSV,
        nets=phema_inputs_for_samples,
    output:
        report(
            SAMPLE_GRID,
            caption="../report/samples.rst",
            category="Samples",
            labels=lambda wc: {"run": wc.run, "guidance": wc.guidance},
        ),
    log:
        log_file("samples", "{run}/{guidance}"),
    benchmark:
        bench_file("samples", "{run}/{guidance}")
    conda:
        "../envs/eval.yaml"
    threads: rule_threads("samples")
    resources:
        **rule_resources("samples"),
    params:
        metric=lambda wc: GUIDANCE[wc.guidance]["metrics"][0],
        seeds=config["samples"]["seeds"],
        batch=config["samples"]["batch"],
        steps=config["samples"]["steps"] or config["score"]["steps"],
        eager=sampling_mode_arg(),
        interval=lambda wc: " ".join(command_line(GUIDANCE[wc.guidance]["interval"])),
        tmp=lambda wc: fill(SAMPLE_IMAGES, run=wc.run, guidance=wc.guidance),
    shell:
        "rm -rf {params.tmp:q}; "
        "best=$(python -m edm2 report best --best {input.best:q} --run {wildcards.run}"
        " --guidance {wildcards.guidance} --metric {params.metric} --shell 2>> {log:q}); "
        'eval "python -m edm2 generate $best --seeds {params.seeds} --batch {params.batch}'
        ' --steps {params.steps} {params.interval} {params.eager} --outdir {params.tmp:q}" > {log:q} 2>&1; '
        "python -m edm2 report grid --images {params.tmp:q} --out {output:q} >> {log:q} 2>&1; "
        "rm -rf {params.tmp:q}"


rule report:
    """A one-page summary (Markdown and self-contained HTML) of the tables, plots (EMA heat maps
    and guidance searches included) and samples."""
    input:
        best=BEST_CSV,
        scores=SCORES_CSV,
        tables=table_files(),
        plots=plot_files() + heatmap_files() + search_plot_files(),
        samples=sample_files(),
    output:
        md=fill(SUMMARY, ext="md"),
        html=fill(SUMMARY, ext="html"),
    log:
        log_file("report"),
    benchmark:
        bench_file("report")
    conda:
        "../envs/report.yaml"
    threads: rule_threads("report")
    resources:
        **rule_resources("report"),
    params:
        samples=lambda wc, input: " ".join(f"--samples {shlex.quote(f)}" for f in input.samples),
    shell:
        "python -m edm2 report summary --best {input.best:q} --scores {input.scores:q} --table {input.tables[1]:q}"
        " {params.samples}"
        " --md {output.md:q} --html {output.html:q} {input.plots:q} > {log:q} 2>&1"


rule heatmap:
    """The autoguidance paper's heat map (Fig. 3c): the metric over the main net's and the guide's
    EMA lengths, for a guidance setting that sweeps both (guide_std a list or 'grid')."""
    input:
        SCORES_CSV,
    output:
        report(
            expand(EMA_HEATMAP, ext=PLOT_EXTS, allow_missing=True),
            caption="../report/heatmap.rst",
            category="Plots",
            subcategory="Autoguidance EMA",
        ),
    log:
        log_file("heatmap", "{guidance}-{metric}"),
    benchmark:
        bench_file("heatmap", "{guidance}-{metric}")
    conda:
        "../envs/report.yaml"
    threads: rule_threads("heatmap")
    resources:
        **rule_resources("heatmap"),
    params:
        stem=lambda wc, output: os.path.splitext(output[0])[0],
    shell:
        "python -m edm2 report heatmap --scores {input:q} --guidance {wildcards.guidance} --metric {wildcards.metric}"
        " --out {params.stem:q} > {log:q} 2>&1"


rule search_report:
    """A guidance search's table (best setting, confirmed value, reported value) and its plot of
    the metric along each searched axis."""
    input:
        lambda wc: search_states(wc.search),
    output:
        table=report(
            expand(SEARCH_TABLE, ext=["csv"], allow_missing=True),
            caption="../report/search.rst",
            category="Guidance search",
        ),
        md=expand(SEARCH_TABLE, ext=["md"], allow_missing=True),
        plot=report(
            expand(SEARCH_PLOT, ext=PLOT_EXTS, allow_missing=True),
            caption="../report/search.rst",
            category="Guidance search",
        ),
    log:
        log_file("search_report", "{search}"),
    benchmark:
        bench_file("search_report", "{search}")
    conda:
        "../envs/report.yaml"
    threads: rule_threads("search_report")
    resources:
        **rule_resources("search_report"),
    params:
        reported=lambda wc: " ".join(f"--reported {run}={v:g}" for run, v in SEARCHES[wc.search]["reported"].items()),
        table=lambda wc, output: os.path.splitext(output.table[0])[0],
        plot=lambda wc, output: os.path.splitext(output.plot[0])[0],
    shell:
        "python -m edm2 report search --search {wildcards.search} {params.reported} --table {params.table:q}"
        " --plot {params.plot:q} {input:q} > {log:q} 2>&1"


rule sweep_set:
    """The scores of a run's Fig. 5b and 5c, one per line: as result_set for the aggregates, a
    changed set (a length, tensor or training length removed) re-draws the plots, which reach
    the scores only through ancient() networks."""
    output:
        SWEEP_SET,
    log:
        log_file("sweep_set", "{run}"),
    benchmark:
        bench_file("sweep_set", "{run}")
    localrule: True
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        **rule_resources("result_set"),
    params:
        members=lambda wc: sorted(
            (tensor_score_files(wc.run) if PER_TENSOR else []) + (at_score_files(wc.run) if AT_KIMG else [])
        ),
    shell:
        "printf '%s\\n' {params.members:q} > {output:q} 2> {log:q}"


rule fig5b:
    """Fig. 5b of one run: the metric vs the EMA length of each moved tensor, the rest at the
    global optimum (one curve per tensor; the global optimum as a line)."""
    input:
        tensors=lambda wc: tensor_score_files(wc.run),
        members=lambda wc: fill(SWEEP_SET, run=wc.run),
        grid=lambda wc: [score_file(wc.run, sweep_guidance(wc.run), s) for s in GRID],
    output:
        expand(FIG5B_PLOT, ext=PLOT_EXTS, allow_missing=True),
    log:
        log_file("fig5b", "{run}-{metric}"),
    benchmark:
        bench_file("fig5b", "{run}-{metric}")
    conda:
        "../envs/report.yaml"
    threads: rule_threads("plots")
    resources:
        **rule_resources("plots"),
    params:
        stem=lambda wc, output: os.path.splitext(output[0])[0],
        statistic=config["score"]["statistic"],
        grid=lambda wc, input: " ".join(f"--grid-score {shlex.quote(f)}" for f in input.grid),
    shell:
        "python -m edm2 report per-tensor --metric {wildcards.metric} --statistic {params.statistic}"
        " {params.grid} --out {params.stem:q} {input.tensors:q} > {log:q} 2>&1"


rule fig5c:
    """Fig. 5c of one run: the metric vs EMA length at each training length of phema.at_kimg and
    at the end of training (one curve per length, optimum marked)."""
    input:
        at=lambda wc: at_score_files(wc.run),
        members=lambda wc: fill(SWEEP_SET, run=wc.run),
        grid=lambda wc: [score_file(wc.run, sweep_guidance(wc.run), s) for s in GRID],
    output:
        expand(FIG5C_PLOT, ext=PLOT_EXTS, allow_missing=True),
    log:
        log_file("fig5c", "{run}-{metric}"),
    benchmark:
        bench_file("fig5c", "{run}-{metric}")
    conda:
        "../envs/report.yaml"
    threads: rule_threads("plots")
    resources:
        **rule_resources("plots"),
    params:
        stem=lambda wc, output: os.path.splitext(output[0])[0],
        statistic=config["score"]["statistic"],
    shell:
        "python -m edm2 report over-training --metric {wildcards.metric} --statistic {params.statistic}"
        " --out {params.stem:q} {input.at:q} {input.grid:q} > {log:q} 2>&1"
