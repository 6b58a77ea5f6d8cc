# flex-ledger's image: the service and its commands, no embedded database, no secret.
#
#   docker build -t flex-ledger .                       (BASE: a slim Python 3.11+ image)
#   docker run --rm -e LEDGER_DATABASE_URL=... flex-ledger migrate
#   docker run -p 8000:8000 -e LEDGER_DATABASE_URL=... -e LEDGER_WEBHOOK_SECRETS=... flex-ledger
#
# Settings come from the environment (README "Settings"); `docker stop` is a clean shutdown (the
# command is PID 1 and drains on SIGTERM). Health: GET /readyz on 8000 (serve) or on
# LEDGER_METRICS_PORT, 9464 (work); compose.yaml checks both.
ARG BASE=python:3.12-slim

# --- build: the project's wheel and every dependency at the versions requirements.lock pins -----
FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE schema.sql requirements.lock ./
COPY ledger ledger
COPY projections projections
COPY reactors reactors
COPY api api
COPY ledger_cli ledger_cli
RUN python3 -m venv /opt/flex-ledger \
 && /opt/flex-ledger/bin/pip install --constraint requirements.lock . \
 && /opt/flex-ledger/bin/python -m compileall -q /opt/flex-ledger/lib

# --- run: the virtual environment alone, as an unprivileged user --------------------------------
FROM ${BASE}
RUN useradd --uid 10001 --user-group --home-dir /home/ledger --create-home ledger
COPY --from=build /opt/flex-ledger /opt/flex-ledger
ENV PATH=/opt/flex-ledger/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LEDGER_DATA_DIR=/home/ledger/.ledger
USER 10001:10001
WORKDIR /home/ledger
EXPOSE 8000 9464
STOPSIGNAL SIGTERM
ENTRYPOINT ["ledger"]
CMD ["serve", "--host", "0.0.0.0"]
