# One image for every Python service of compose.yaml: trainer, rollout-worker, grader,
# rq-dashboard; each runs it with a different command.
#
# Built without a registry or network: the base image comes from debootstrap and the Python
# dependencies from wheels downloaded on the host.
#   docker/build_base_image.sh rlm-project-base:bookworm python3,python3-venv,git,bubblewrap,patch,docker.io,ca-certificates,redis-server
#   docker/download_wheels.sh
#   docker build -t rlm-grpo .
ARG BASE_IMAGE=rlm-project-base:bookworm
FROM ${BASE_IMAGE}

COPY .wheels /tmp/wheels
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --quiet --no-index --find-links /tmp/wheels \
       -r /tmp/wheels/requirements.txt \
    && rm -rf /tmp/wheels

WORKDIR /app
COPY common common
COPY producer producer
COPY rollout_workers rollout_workers
COPY trainer trainer
COPY grader grader
# The CPU stand-ins (scripted LLM, recording backend) for the compose test profile.
COPY tests tests
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True
# Refuses empty, short or placeholder secrets (REDIS_PASSWORD, GRADER_TOKEN, GATEWAY_TOKEN).
COPY docker/check_secrets.sh /usr/local/bin/rlm-check-secrets
ENTRYPOINT ["/usr/local/bin/rlm-check-secrets"]
CMD ["python", "-m", "trainer", "--help"]
