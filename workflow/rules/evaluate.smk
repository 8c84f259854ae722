# Scoring: one job per (run, guidance setting, EMA std). Images are generated on the fly and fed
# to the configured feature detectors over K disjoint seed ranges; the result is one small JSON.
# Metric list, sampler settings and guidance weight are params, so changing them re-scores.


rule score:
    input:
        unpack(score_inputs),
    output:
        SCORE,
    log:
        log_file("score", "{run}/{guidance}/ema-{std}"),
    benchmark:
        bench_file("score", "{run}/{guidance}/ema-{std}")
    conda:
        "../envs/eval.yaml"
    threads: rule_threads("score")
    resources:
        **rule_resources("score"),
    params:
        **score_params(lambda wc: net_file(wc.run, wc.std)),
    shell:
        SCORE_SHELL


rule score_tensor:
    """One per-tensor variant (phema.per_tensor, Fig. 5b): `tensor` at EMA length `std`, the rest
    at the run's global optimum."""
    input:
        unpack(tensor_score_inputs),
    output:
        TENSOR_SCORE,
    log:
        log_file("score_tensor", "{run}/{guidance}/{tensor}/ema-{std}"),
    benchmark:
        bench_file("score_tensor", "{run}/{guidance}/{tensor}/ema-{std}")
    conda:
        "../envs/eval.yaml"
    threads: rule_threads("score")
    resources:
        **rule_resources("score"),
    params:
        **score_params(lambda wc: tensor_net_file(wc.run, wc.tensor, wc.std, per_tensor_base(wc.run))),
    shell:
        SCORE_SHELL


rule score_at:
    """One EMA length of the grid reconstructed at an earlier training time (phema.at_kimg, Fig. 5c)."""
    input:
        unpack(at_score_inputs),
    output:
        AT_SCORE,
    log:
        log_file("score_at", "{run}/{guidance}/kimg-{kimg}/ema-{std}"),
    benchmark:
        bench_file("score_at", "{run}/{guidance}/kimg-{kimg}/ema-{std}")
    conda:
        "../envs/eval.yaml"
    threads: rule_threads("score")
    resources:
        **rule_resources("score"),
    params:
        **score_params(lambda wc: at_net_file(wc.run, int(wc.kimg), wc.std)),
    shell:
        SCORE_SHELL


# A 2-D EMA sweep (guide_std a list or 'grid'): the guide's EMA length is in the file name.
use rule score as score_sweep with:
    output:
        SCORE_SWEEP,
    log:
        log_file("score", "{run}/{guidance}/ema-{std}-guide-{gstd}"),
    benchmark:
        bench_file("score", "{run}/{guidance}/ema-{std}-guide-{gstd}")


# --- The cached guidance search (config `search`, docs/evaluation.md#the-guidance-search) --------
# One job per evaluated setting (a file named after it, shared by the searches of the same
# guidance setting and EMA lengths), one checkpoint per round (its state names the next round's
# points), and the result: the best of the confirmations at score.num x score.seeds_ranges.


rule search_eval:
    input:
        unpack(search_eval_inputs),
    output:
        SEARCH_EVAL,
    log:
        log_file("search_eval", "{run}/{guidance}/ema-{std}-guide-{gstd}/{point}"),
    benchmark:
        bench_file("search_eval", "{run}/{guidance}/ema-{std}-guide-{gstd}/{point}")
    conda:
        "../envs/eval.yaml"
    threads: rule_threads("score")
    resources:
        **rule_resources("score"),
    params:
        **search_eval_params(),
    shell:
        SCORE_SHELL


checkpoint search_round:
    """The state after a screening round: every evaluation so far, the best, the next points."""
    input:
        unpack(search_round_inputs),
    output:
        SEARCH_STATE,
    log:
        log_file("search_round", "{search}/{run}/{metric}/round-{round}"),
    benchmark:
        bench_file("search_round", "{search}/{run}/{metric}/round-{round}")
    conda:
        "../envs/report.yaml"
    threads: rule_threads("search_round")
    resources:
        **rule_resources("search_round"),
    params:
        plan=lambda wc: SEARCHES[wc.search]["args"],
        statistic=config["score"]["statistic"],
        evals=lambda wc, input: input.get("evals", []),  # (none while a dry run has not reached the round)
    shell:
        "python -m edm2 report search-round {params.plan} --round {wildcards.round} --run {wildcards.run}"
        " --metric {wildcards.metric} --statistic {params.statistic} --out {output:q} {params.evals:q} > {log:q} 2>&1"


rule search_result:
    """The best of the confirmed settings (the round after the last screening round)."""
    input:
        unpack(search_result_inputs),
    output:
        SEARCH_RESULT,
    log:
        log_file("search_result", "{search}/{run}/{metric}"),
    benchmark:
        bench_file("search_result", "{search}/{run}/{metric}")
    conda:
        "../envs/report.yaml"
    threads: rule_threads("search_round")
    resources:
        **rule_resources("search_round"),
    params:
        plan=lambda wc: SEARCHES[wc.search]["args"],
        round=lambda wc: SEARCHES[wc.search]["plan"].rounds,
        statistic=config["score"]["statistic"],
        evals=lambda wc, input: input.get("evals", []),
    shell:
        "python -m edm2 report search-round {params.plan} --round {params.round} --run {wildcards.run}"
        " --metric {wildcards.metric} --statistic {params.statistic} --out {output:q} {params.evals:q} > {log:q} 2>&1"
