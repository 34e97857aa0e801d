# pg-node-agent in a container: the wheel on a slim Debian 12 base, run as a non-root user.
#   docker build -t pg-node-agent .
#   docker run --network host -v /etc/pg-node-agent:/etc/pg-node-agent:ro \
#     -v /var/run/postgresql:/var/run/postgresql pg-node-agent
# Beside a Patroni container: config/compose/ and docs/container.md.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# Peer authentication over a shared socket maps the connecting uid through the *server's*
# /etc/passwd: build with the uid of PostgreSQL's OS user there (999 in the postgres images).
# The user comes first: pgbackrest pulls in postgresql-common, whose postinst would otherwise
# create `postgres` with whatever system uid is free (and keeps an existing one).
ARG PG_UID=999
ARG PG_GID=999
RUN groupadd --system --gid "$PG_GID" postgres \
    && useradd --system --uid "$PG_UID" --gid "$PG_GID" --no-create-home \
        --home-dir /var/lib/pg-node-agent --shell /usr/sbin/nologin postgres \
    && install -d -o "$PG_UID" -g "$PG_GID" -m 0700 /var/lib/pg-node-agent
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-client pgbackrest \
    && rm -rf /var/lib/apt/lists/* \
    && test "$(id -u postgres):$(id -g postgres)" = "$PG_UID:$PG_GID"
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER postgres
ENV STATE_DIRECTORY=/var/lib/pg-node-agent
VOLUME /var/lib/pg-node-agent
EXPOSE 9188
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s \
  CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:9188/health', timeout=2).status != 200)"]
ENTRYPOINT ["pg-node-agent", "-c", "/etc/pg-node-agent/agent.toml"]
CMD ["run"]
