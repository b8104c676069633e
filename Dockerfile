# The stopbudget operator image.
#
#   docker build -t registry.example.com/stopbudget:0.1.0 .
#
# The Helm chart runs `stopbudget run` as UID/GID 10001 with a read-only root
# filesystem (only /tmp is writable), so nothing here writes at run time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY crds/ crds/
RUN pip install . \
 && rm -rf /src \
 && groupadd --system --gid 10001 stopbudget \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin stopbudget

WORKDIR /tmp
USER 10001:10001
# /metrics, /healthz, /readyz; the Alertmanager webhook.
EXPOSE 8080 8081
ENTRYPOINT ["stopbudget"]
CMD ["run"]
