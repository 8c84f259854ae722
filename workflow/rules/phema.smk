# Post-hoc EMA: reconstruct every EMA length of the grid from a run's snapshots in one pass, and
# optionally (phema.refine) a finer grid around the best coarse length.


rule phema:
    input:
        unpack(lambda wc: snapshot_inputs(wc.run)),
    output:
        expand(PHEMA_NET, std=GRID, allow_missing=True),
    log:
        log_file("phema", "{run}-{kimg}"),
    benchmark:
        bench_file("phema", "{run}-{kimg}")
    conda:
        "../envs/train.yaml"
    threads: rule_threads("phema")
    resources:
        **rule_resources("phema"),
    params:
        indir=lambda wc: snapshot_dir(wc.run),
        outdir=lambda wc: phema_dir(wc.run),
        stds=",".join(GRID),
        kimg=lambda wc: int(wc.kimg),
        extra=config["phema"]["extra_args"],
    shell:
        "python -m edm2 phema --indir {params.indir:q} --outdir {params.outdir:q} --outstd {params.stds}"
        " --outkimg {params.kimg} {params.extra} > {log:q} 2>&1"


rule model_info:
    """Parameters and Gflops of a run's network (for the tables and the Gflops plot)."""
    input:
        net=lambda wc: ancient(net_input(wc.run, run_stds(wc.run)[0])),
        done=lambda wc: train_done(wc.run),
    output:
        MODEL_INFO,
    log:
        log_file("model_info", "{run}"),
    benchmark:
        bench_file("model_info", "{run}")
    conda:
        "../envs/report.yaml"
    threads: rule_threads("model_info")
    resources:
        **rule_resources("model_info"),
    params:
        label=lambda wc: MODELS[wc.run]["label"],
        net=lambda wc: net_file(wc.run, run_stds(wc.run)[0]),
    shell:
        "python -m edm2 report model-info --net {params.net:q} --run {wildcards.run} --label {params.label:q}"
        " --out {output:q} > {log:q} 2>&1"


checkpoint refine_grid:
    """Best EMA length of every (run, guidance setting) on the coarse grid -> the finer stds
    between its neighbours (phema.refine)."""
    input:
        coarse_scores(),
    output:
        REFINE_GRID,
    log:
        log_file("refine_grid"),
    benchmark:
        bench_file("refine_grid")
    conda:
        "../envs/report.yaml"
    threads: rule_threads("refine_grid")
    resources:
        **rule_resources("refine_grid"),
    params:
        points=config["phema"]["refine_points"],
        grid=",".join(GRID),
        statistic=config["score"]["statistic"],
    shell:
        "python -m edm2 report refine --grid {params.grid} --points {params.points}"
        " --statistic {params.statistic} --out {output:q} {input:q} > {log:q} 2>&1"


rule phema_refine:
    """The refined EMA lengths of one run (a folder; empty when the run needs none)."""
    input:
        unpack(lambda wc: snapshot_inputs(wc.run)),
        grid=REFINE_GRID,
    output:
        directory(REFINE_DIR),
    log:
        log_file("phema_refine", "{run}"),
    benchmark:
        bench_file("phema_refine", "{run}")
    conda:
        "../envs/train.yaml"
    threads: rule_threads("phema")
    resources:
        **rule_resources("phema"),
    params:
        indir=lambda wc: snapshot_dir(wc.run),
        stds=lambda wc: ",".join(refine_phema_stds(wc.run)),
        kimg=lambda wc: MODELS[wc.run]["kimg"],
        extra=config["phema"]["extra_args"],
    shell:
        "mkdir -p {output:q}; "
        "if [ -n '{params.stds}' ]; then "
        "python -m edm2 phema --indir {params.indir:q} --outdir {output:q} --outstd {params.stds}"
        " --outkimg {params.kimg} {params.extra} > {log:q} 2>&1; "
        "else echo 'no refined EMA lengths needed' > {log:q}; fi"


rule phema_tensor:
    """Every per-tensor variant of one run in one pass (phema.per_tensor, Fig. 5b): each listed
    tensor at each EMA length of the sweep, the rest at the global optimum."""
    input:
        unpack(lambda wc: snapshot_inputs(wc.run)),
        base=per_tensor_base_input,
    output:
        directory(PHEMA_TENSOR_DIR),
    log:
        log_file("phema_tensor", "{run}"),
    benchmark:
        bench_file("phema_tensor", "{run}")
    conda:
        "../envs/train.yaml"
    threads: rule_threads("phema")
    resources:
        **rule_resources("phema"),
    params:
        indir=lambda wc: snapshot_dir(wc.run),
        base=lambda wc: per_tensor_base(wc.run),
        variants=lambda wc: tensor_std_args(wc.run),
        kimg=lambda wc: MODELS[wc.run]["kimg"],
        extra=config["phema"]["extra_args"],
    shell:
        "python -m edm2 phema --indir {params.indir:q} --outdir {output:q} --outstd {params.base}"
        " {params.variants} --outkimg {params.kimg} {params.extra} > {log:q} 2>&1"


rule phema_at:
    """The EMA grid of one run at every earlier training time of phema.at_kimg (Fig. 5c), each
    from the snapshots up to it, in one pass."""
    input:
        unpack(lambda wc: snapshot_inputs(wc.run)),
    output:
        directory(PHEMA_AT_DIR),
    log:
        log_file("phema_at", "{run}"),
    benchmark:
        bench_file("phema_at", "{run}")
    conda:
        "../envs/train.yaml"
    threads: rule_threads("phema")
    resources:
        **rule_resources("phema"),
    params:
        indir=lambda wc: snapshot_dir(wc.run),
        stds=",".join(AT_GRID),
        kimgs=",".join(str(k) for k in AT_KIMG),
        extra=config["phema"]["extra_args"],
    shell:
        "python -m edm2 phema --indir {params.indir:q} --outdir {output:q} --outstd {params.stds}"
        " --outkimg {params.kimgs} {params.extra} > {log:q} 2>&1"
