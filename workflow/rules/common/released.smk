# Helpers of the released-artifact rules (rules/released.smk): the released nets to download,
# the raw snapshots folder, and the inputs and options of their scores and table.

import shlex

from edm2.sample.options import command_line
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
        args += command_line(m["interval"])  # the guidance interval (edm2.sample.options)
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
