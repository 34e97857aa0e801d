# pg-node-agent in a container: the wheel on a slim Debian base, run as a non-root user.
# Build: docker build -t pg-node-agent .   Run: docker run -v /etc/pg-node-agent:/etc/pg-node-agent:ro \
#   -v /var/run/postgresql:/var/run/postgresql --network host pg-node-agent
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-client pgbackrest \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 999 postgres-agent \
    && useradd --system --uid 999 --gid 999 --home-dir /var/lib/pg-node-agent --create-home pgagent
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER pgagent
ENV STATE_DIRECTORY=/var/lib/pg-node-agent
EXPOSE 9188
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9188/health', timeout=2).status == 200 else 1)"
ENTRYPOINT ["pg-node-agent", "-c", "/etc/pg-node-agent/agent.toml"]
CMD ["run"]
