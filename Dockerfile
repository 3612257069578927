# One image for every role of Dialogue Engine: the API (`dialogue api`), the worker (`dialogue worker`)
# and the one-shot jobs (`dialogue db upgrade`, `dialogue kb ingest ...`). docker-compose.temporal.yml
# picks the role with the command, and gives each role its own health check, so there is no
# HEALTHCHECK here.
#
# Without the `embeddings` extra: it needs torch's CPU build, which the default package index does not
# serve. Retrieval is BM25 then, and intents come from the TF-IDF classifier trained below.

FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md worker.py ./
COPY api ./api
COPY activities ./activities
COPY dialogue ./dialogue
COPY workflows ./workflows
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .


FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies from pyproject.toml alone, in their own layer: a code change does not reinstall them.
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt /tmp/pyproject.toml

# The built wheel, not the source tree: what runs is what was packaged, so a module or data file
# missing from the package fails here, not in production.
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels

# The demo bot the worker serves, and its intent classifier trained once, here (about 10 s): every
# replica then serves the same model version, the one each reply's lineage names.
COPY examples ./examples
RUN dialogue nlu train --data examples/demo/nlu/train.jsonl --out models/northwind-support-nlu --no-embeddings

RUN groupadd --system --gid 10001 dialogue \
    && useradd --system --uid 10001 --gid dialogue --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin dialogue \
    && mkdir -p /app/data \
    && chown dialogue:dialogue /app/data

# The settings' defaults point into the source tree, which an installed wheel does not have.
ENV DIALOGUE_DATA_DIR=/app/data \
    DIALOGUE_BOT_PATH=/app/examples/demo/bot.yaml \
    DIALOGUE_NLU_MODEL_DIR=/app/models/northwind-support-nlu

# Numeric, so an orchestrator can verify it is not root without reading /etc/passwd.
USER 10001:10001

EXPOSE 8000 9464
CMD ["dialogue", "api"]
