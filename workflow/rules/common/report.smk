# Helpers of the result rules (rules/report.smk): every score the aggregate reads, and the
# networks a sample grid may pick.


def all_scores(wildcards=None):
    """Every score JSON of the configuration (coarse grid, plus the refined stds when enabled)."""
    files = coarse_scores()
    if REFINE:
        for run, per_guidance in refined_stds().items():
            for g, stds in per_guidance.items():
                files.extend(score_file(run, g, std) for std in stds if std not in GRID)
    return files


def phema_inputs_for_samples(wildcards):
    """Every network the sample grid of (run, guidance) may pick (ancient: only their presence
    matters; the choice comes from the scores)."""
    run, g = wildcards.run, wildcards.guidance
    setting = GUIDANCE[g]
    points = scored_points(run, g)
    files = [net_input(run, std) for std, _ in points]
    if is_guided(setting, run):
        mix = guidance_mix(setting, run)
        weight = guidance_weight(setting, run)
        files.extend(source for std, gstd in points for _, source, _ in guides_of(setting, std, gstd, weight, mix))
    if REFINE:
        files.append(refine_dir(run))
        if is_guided(setting, run):
            files.append(refine_dir(setting["guide"]))
            if setting["cfg_guide"] is not None:
                files.append(refine_dir(setting["cfg_guide"]))
    return [ancient(f) for f in dict.fromkeys(files)]
