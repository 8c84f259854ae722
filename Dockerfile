# syntax=docker/dockerfile:1
# The edm2 package and everything its workflow needs, in one image (README "Container image").
#
#   docker build -t edm2:0.1.0 .
#   docker run --rm --gpus all -v "$PWD:/work" edm2:0.1.0 flops edm2-img512-xs
#   apptainer build edm2.sif docker-daemon://edm2:0.1.0
#
# Two stages:
#   build    installs the package, pinned by constraints.txt, with the extras the workflow uses
#            (vae, dinov2, demo, workflow) into the virtual environment /opt/edm2; the wheel
#            build (setuptools, pip's build isolation) happens here only.
#   runtime  the base image plus /opt/edm2 and a non-root user; no compilers, no setuptools, no
#            sources or tests. Its last step runs self-checks (`edm2 --help`, `edm2 flops`, a
#            short pytest selection on the CPU); a failing check fails the build.
#
# PyTorch comes from the base image. The default base is the official PyTorch 2.13.0 image with
# CUDA 12.6, the same torch release that constraints.txt pins (there as the CPU wheel): the
# virtual environment sees the base's packages (--system-site-packages), and pip keeps the base's
# torch because `2.13.0+cu126` satisfies `torch==2.13.0`. A base with another torch release
# stops the build with a message, unless TORCH=base is given: then the torch pin (only that
# line) is dropped and the base's torch is used as it is; the image's /opt/edm2/environment.txt
# records what was installed either way. A base without torch (e.g. plain Debian with
# python3-venv, as CI uses) gets the pinned wheel from the package index.
#
# Build arguments:
#   BASE      base image with python3 (>= 3.10, with venv) and bash; default: pinned tag below
#   TORCH     pinned (default): torch must be the release constraints.txt pins; base: keep the
#             base's torch, whatever its release
#   VERSION   image version label; must equal the package version (checked)
#   SOURCE    repository URL label; REVISION: commit label (ci/container/build.sh fills both)

ARG BASE=docker.io/pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime

# --- build ----------------------------------------------------------------------------------------
FROM ${BASE} AS build
ARG TORCH=pinned
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY edm2 ./edm2
# The torch check (see the top of this file), the package into /opt/edm2, a torchrun that runs
# this environment's interpreter (the base's torchrun, if any, runs the base's python, which
# cannot import edm2), the record of what was installed, pytest for the runtime stage's
# self-checks into /opt/selftest (mounted there, never copied), and setuptools/wheel out.
RUN set -eu; \
    pin="$(sed -n 's/^torch==//p' constraints.txt)"; \
    have="$(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"; \
    case "$TORCH" in \
      pinned) cp constraints.txt /tmp/constraints.txt; \
              if [ -n "$have" ] && [ "${have%%+*}" != "$pin" ]; then \
                echo "error: the base image has torch $have but constraints.txt pins torch==$pin;" \
                     "use a base with torch $pin, or --build-arg TORCH=base to keep the base's torch" >&2; \
                exit 1; \
              fi ;; \
      base)   grep -v '^torch==' constraints.txt >/tmp/constraints.txt ;; \
      *)      echo "error: --build-arg TORCH=$TORCH: use 'pinned' or 'base'" >&2; exit 1 ;; \
    esac; \
    echo "base torch: ${have:-none}; constraints.txt pins torch==$pin; TORCH=$TORCH"; \
    python3 -m venv --system-site-packages /opt/edm2; \
    /opt/edm2/bin/python -m pip install --quiet -c /tmp/constraints.txt '.[vae,dinov2,demo,monitor,workflow]'; \
    if [ ! -e /opt/edm2/bin/torchrun ]; then \
      printf '#!/opt/edm2/bin/python\nimport sys\nfrom torch.distributed.run import main\nsys.exit(main())\n' \
        >/opt/edm2/bin/torchrun; \
      chmod 755 /opt/edm2/bin/torchrun; \
    fi; \
    /opt/edm2/bin/python -m pip freeze --all >/opt/edm2/environment.txt; \
    /opt/edm2/bin/python -m pip install --quiet --target /opt/selftest -c /tmp/constraints.txt pytest; \
    /opt/edm2/bin/python -m pip uninstall --quiet --yes setuptools wheel 2>/dev/null || true

# --- runtime --------------------------------------------------------------------------------------
FROM ${BASE} AS runtime
ARG VERSION=0.1.0
ARG SOURCE=""
ARG REVISION=""
LABEL org.opencontainers.image.title="edm2" \
      org.opencontainers.image.description="EDM2 (Karras et al., CVPR 2024) re-implementation and its Snakemake workflow" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="BSD-3-Clause"
COPY --from=build /opt/edm2 /opt/edm2
# uid 1000 (the next free one if the base already has a user there): the usual first user of a
# workstation, so files written to a mounted folder keep a sensible owner; `docker run --user
# "$(id -u):$(id -g)"` overrides it (Apptainer always runs as the calling user).
RUN if getent passwd 1000 >/dev/null; then uid=""; else uid="--uid 1000"; fi && \
    useradd $uid --create-home --shell /bin/bash edm2 && \
    mkdir -p /work && chown edm2:edm2 /work
ENV PATH=/opt/edm2/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg
USER edm2
WORKDIR /work

# Self-checks, on the CPU, as the image's user, with the image's interpreter: the command line,
# the FLOP count of a paper model, and the network, sampler and post-hoc EMA tests of this
# repository (mounted read-only, with pytest from the build stage; neither stays in the image).
RUN --mount=type=bind,source=tests,target=/tmp/edm2-selftest/tests \
    --mount=type=bind,source=pyproject.toml,target=/tmp/edm2-selftest/pyproject.toml \
    --mount=type=bind,from=build,source=/opt/selftest,target=/opt/selftest \
    set -eu; \
    export TMPDIR="$(mktemp -d /tmp/edm2-selftest-tmp.XXXXXX)"; \
    export XDG_CACHE_HOME="$TMPDIR/cache" MPLCONFIGDIR="$TMPDIR/matplotlib"; \
    cd "$TMPDIR"; \
    test "$(command -v python)" = /opt/edm2/bin/python; \
    installed="$(python -c 'import importlib.metadata as m; print(m.version("edm2"))')"; \
    [ "$installed" = "$VERSION" ] || { echo "error: edm2 $installed installed, image labelled $VERSION" >&2; exit 1; }; \
    python -c 'import edm2, torch; print("edm2", edm2.__file__, "| torch", torch.__version__, "| CUDA build", torch.version.cuda)'; \
    python -c 'import edm2, sys; sys.exit(0 if edm2.__file__.startswith("/opt/edm2/") else "edm2 is not the installed package")'; \
    python -c 'import diffusers, transformers, sklearn, snakemake, pandas, jsonschema'; \
    edm2 --help >/dev/null; \
    edm2 flops edm2-img512-xs | tail -n 1; \
    torchrun --help >/dev/null; \
    PYTHONPATH=/opt/selftest python -m pytest -q -p no:cacheprovider -x \
      --rootdir /tmp/edm2-selftest -c /tmp/edm2-selftest/pyproject.toml \
      /tmp/edm2-selftest/tests/nn /tmp/edm2-selftest/tests/sample/test_sampler.py \
      /tmp/edm2-selftest/tests/ema/test_phema.py; \
    cd /; \
    rm -rf "$TMPDIR"; \
    echo "self-checks passed"

ENTRYPOINT ["edm2"]
CMD ["--help"]
