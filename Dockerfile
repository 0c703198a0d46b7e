# dapi: the daemon image. Built from this repository and the package index alone.
#   docker build -t dapi .
#   docker run -v /path/to/config:/config -p 9000:9000 -p 9100:9100 dapi
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dapi ./dapi
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 dapi
COPY --from=build /install /usr/local
USER dapi
ENV DAPI_LOG_FORMAT=json \
    DAPI_DATA_DIR=/home/dapi/.dapi
VOLUME ["/home/dapi/.dapi"]
EXPOSE 9000 9100 9200
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:9000/v1/status', timeout=4); sys.exit(0)" || exit 1
ENTRYPOINT ["dapi", "run", "--config", "/config/config.yaml"]
